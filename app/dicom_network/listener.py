"""The DICOM listener (pynetdicom C-STORE / C-ECHO SCP) of ``python -m app serve``.

* AE title ``ICH_DICOM_AE_TITLE``; calling AE titles outside ``ICH_DICOM_ALLOWED_CALLING_AETS`` get an
  association rejection (permanent, "calling AE title not recognised"); an empty list accepts any (logged).
* Presentation contexts: Verification; CT Image Storage in every transfer syntax the ingestion decodes
  (:func:`decodable_transfer_syntaxes`: the uncompressed ones and each compressed one with an installed
  decoder); every other storage SOP class in the uncompressed syntaxes, so that such an instance gets a DIMSE
  status instead of a failed association.
* C-STORE statuses: 0x0000 stored (also for a re-sent instance: it overwrites its own spool file); 0x0122
  SOP class not supported (not CT Image Storage); 0xA900 data set does not match the SOP class (Modality not
  CT); 0xC000 cannot understand (the data set cannot be decoded or lacks its UIDs); 0xA700 out of resources
  (per-association bytes or instances, series per study, or the spool cannot be written).
* Instances are written to the :class:`~app.dicom_network.spool.Spool` as received (Part-10), one at a time per
  association, so memory does not grow with the study. A handler never raises: the listener keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

import pydicom
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from app.dicom_network.metrics import DicomMetrics
from app.dicom_network.spool import Spool, SpoolLimit
from app.errors import IngestionError
from app.ingestion.reading import check_decodable

log = logging.getLogger("app.dicom_network.listener")

SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes whose CT pixel data the ingestion decodes: the uncompressed ones and every
    compressed one :func:`app.ingestion.reading.check_decodable` accepts (an installed decoder)."""
    out = [str(ts) for ts in UNCOMPRESSED]
    for ts in AllTransferSyntaxes:
        uid = UID(ts)
        if str(uid) in out or not uid.is_compressed:
            continue
        try:
            check_decodable(str(uid))
        except IngestionError:
            continue
        out.append(str(uid))
    return out


class Listener:
    """pynetdicom server around a :class:`Spool`; :meth:`start` binds, :meth:`stop` closes (both idempotent)."""

    def __init__(self, settings: Any, spool: Spool, metrics: DicomMetrics):
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.allowed = [a.strip() for a in settings.dicom_allowed_calling_aets.split(",") if a.strip()]
        self._server: Any = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); port 0 in the settings binds a free one."""
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def build_ae(self) -> Any:
        from pynetdicom import AE, StoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.settings.dicom_ae_title)
        ae.maximum_associations = self.settings.dicom_max_associations
        ae.require_calling_aet = list(self.allowed)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(CTImageStorage, decodable_transfer_syntaxes())
        for context in StoragePresentationContexts:
            if context.abstract_syntax != CTImageStorage:
                ae.add_supported_context(context.abstract_syntax, UNCOMPRESSED)
        return ae

    def start(self) -> None:
        from pynetdicom import evt

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        if not self.allowed:
            log.warning("DICOM listener accepts any calling AE title (ICH_DICOM_ALLOWED_CALLING_AETS is empty)")
        host = self.settings.dicom_host or self.settings.host
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, lambda _event: SUCCESS),
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_REJECTED, self._rejected),
        ]
        self._server = self.build_ae().start_server((host, self.settings.dicom_port), block=False,
                                                    evt_handlers=handlers)
        log.info("DICOM listener started", extra={"ae_title": self.settings.dicom_ae_title,
                                                  "host": self.address[0], "port": self.address[1]})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # --- events -------------------------------------------------------------------------------------------
    def _accepted(self, event: Any) -> None:
        self.metrics.associations.labels("accepted").inc()

    def _rejected(self, event: Any) -> None:
        self.metrics.associations.labels("rejected").inc()
        requestor = getattr(event.assoc, "requestor", None)
        log.warning("DICOM association rejected", extra={"calling_ae": str(getattr(requestor, "ae_title", ""))})

    def _refuse(self, outcome: str, status: int) -> int:
        self.metrics.instances.labels(outcome).inc()
        log.warning("C-STORE refused", extra={"outcome": outcome, "status": f"0x{status:04X}"})
        return status

    def handle_store(self, event: Any) -> int:
        """The C-STORE handler: the status of :mod:`the module docstring <app.dicom_network.listener>`."""
        try:
            return self._store(event)
        except Exception as exc:  # noqa: BLE001 - a handler never takes the listener down
            log.error("C-STORE handler error", extra={"error_type": type(exc).__name__})
            return self._refuse("handler_error", CANNOT_UNDERSTAND)

    def _store(self, event: Any) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class != CTImageStorage:
            return self._refuse("sop_class_not_supported", SOP_CLASS_NOT_SUPPORTED)
        assoc = event.assoc
        received = getattr(assoc, "_ich_received", (0, 0))
        s = self.settings
        if received[1] >= s.dicom_max_association_instances:
            return self._refuse("association_instances", OUT_OF_RESOURCES)
        try:
            data = event.encoded_dataset(include_meta=True)
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
            uids = [str(ds[k].value).strip() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
            modality = str(ds.get("Modality", "") or "").upper()
        except Exception:  # noqa: BLE001 - undecodable client data
            return self._refuse("cannot_understand", CANNOT_UNDERSTAND)
        if not all(UID(u).is_valid for u in uids):
            return self._refuse("cannot_understand", CANNOT_UNDERSTAND)
        if modality != "CT":
            return self._refuse("not_ct", DATASET_DOES_NOT_MATCH_SOP_CLASS)
        if received[0] + len(data) > s.dicom_max_association_bytes:
            return self._refuse("association_bytes", OUT_OF_RESOURCES)
        try:
            new = self.spool.store(*uids, data)
        except SpoolLimit as limit:
            return self._refuse(limit.reason, OUT_OF_RESOURCES)
        except OSError as exc:
            log.error("spool write failed", extra={"error_type": type(exc).__name__})
            return self._refuse("spool_error", OUT_OF_RESOURCES)
        assoc._ich_received = (received[0] + len(data), received[1] + 1)
        self.metrics.instances.labels("stored" if new else "resent").inc()
        self.metrics.spooled_series.set(self.spool.pending())
        return SUCCESS
