"""Where results of studies received over DICOM are sent: ``AET@host:port`` (C-STORE, pynetdicom) or an
``http(s)://`` DICOMweb base URL (STOW-RS, dicomweb-client).

:func:`parse_destinations` reads ``ICH_DICOM_DESTINATIONS``; each destination has a ``label`` for logs and
metrics (for a URL: scheme, host, port and path, never credentials) and ``send(paths)``, which stores Part-10
files and raises :class:`SendError` (with a short, identifier-free reason) unless every one was stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import pydicom
import requests
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

AET_ENTRY = re.compile(r"^(?P<aet>[^@\s\\]{1,16})@(?P<host>[^:\s]+):(?P<port>\d{1,5})$")
# C-STORE statuses that mean "stored": success and the storage warnings (coercion, elements discarded)
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(Exception):
    """A send that did not store every file; the message names no patient or study."""


class Destination(Protocol):
    label: str

    def send(self, paths: Sequence[Path]) -> None: ...


@dataclass(frozen=True)
class CStoreDestination:
    """A C-STORE SCP: ``called_aet`` at ``host``:``port``; we associate as ``calling_aet``."""

    called_aet: str
    host: str
    port: int
    calling_aet: str
    timeout_s: float = 60.0

    @property
    def label(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"

    def send(self, paths: Sequence[Path]) -> None:
        from pynetdicom import AE

        datasets = [pydicom.dcmread(p) for p in paths]
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            raise SendError("association not established (rejected, aborted or no answer)")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", -1)) if status else -1
                if code not in STORED_STATUSES:
                    raise SendError("no C-STORE response" if code < 0 else f"C-STORE status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()


class TimeoutSession(requests.Session):
    """A ``requests.Session`` whose requests time out after ``timeout_s`` (dicomweb-client sets no timeout)."""

    def __init__(self, timeout_s: float):
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(*args, **kwargs)


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb service: STOW-RS to ``{url}/studies``."""

    url: str
    timeout_s: float = 60.0

    @property
    def label(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def send(self, paths: Sequence[Path]) -> None:
        from dicomweb_client.api import DICOMwebClient

        datasets = [pydicom.dcmread(p) for p in paths]
        client = DICOMwebClient(url=self.url, session=TimeoutSession(self.timeout_s))
        try:
            response = client.store_instances(datasets=datasets)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise SendError(f"STOW-RS answered HTTP {status}") from None
        except requests.RequestException as exc:
            raise SendError(f"STOW-RS request failed: {type(exc).__name__}") from None
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            raise SendError(f"STOW-RS refused {len(failed)} of {len(datasets)} instances")


def parse_destinations(value: str, calling_aet: str, timeout_s: float = 60.0) -> list[Destination]:
    """The destinations of a comma-separated ``ICH_DICOM_DESTINATIONS`` value; raises ``ValueError`` naming the
    entry that is neither ``AET@host:port`` nor an ``http(s)://`` URL."""
    out: list[Destination] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.lower().startswith(("http://", "https://")):
            out.append(StowDestination(entry.rstrip("/"), timeout_s))
            continue
        match = AET_ENTRY.match(entry)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"destination {entry!r} is neither AET@host:port nor an http(s):// DICOMweb URL")
        out.append(CStoreDestination(match["aet"], match["host"], int(match["port"]), calling_aet, timeout_s))
    return out
