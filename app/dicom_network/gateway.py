"""The DICOM gateway of ``python -m app serve``: listener, spool, analysis of stable series, outbox.

Once a received series is stable (no instance for ``ICH_SERIES_STABLE_S`` seconds) it is analysed exactly like a
REST upload: ``service.admit()`` (the same admission limit; when every slot is taken or the model is not ready
yet the series waits and retries, since the sender is gone), ``service.predict`` (the same ingestion, quality gate,
model and result document, stored under a prediction id like any other), then the SEG, SR and summary are
rendered through the result store and queued in the outbox for every destination. A refused series is logged with
its refusal code (no identifiers), counted in ``ich_dicom_series_total{outcome=<code>}``, and its destinations
receive an SR stating the refusal (:func:`app.outputs.sr.build_refusal_sr`) when a header of the series can be read.
A batch whose SOP Instance UIDs were analysed before (a re-sent series) is dropped without a second analysis.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from app.api.logging_config import pseudonym
from app.api.problems import Problem
from app.api.uploads import Upload
from app.dicom_network.destinations import parse_destinations
from app.dicom_network.listener import Listener
from app.dicom_network.metrics import DicomMetrics
from app.dicom_network.outbox import Outbox, RetryPolicy
from app.dicom_network.spool import Batch, Spool
from app.errors import IngestionError
from app.outputs.result_uids import ResultUids, source_digest
from app.outputs.sr import build_refusal_sr, sr_bytes

log = logging.getLogger("app.dicom_network.gateway")

RESULT_FILES = ("seg.dcm", "sr.dcm", "summary.dcm")
RETRY_CODES = {"overloaded", "not_ready"}


class SpoolUpload(Upload):
    """The batch folder as the service's upload; the gateway, not the service, removes it (the refusal SR needs
    the headers after the service has read the instances)."""

    def cleanup(self) -> None:
        pass


def _headers(files: list[Path]) -> list[pydicom.Dataset]:
    """Pixel-free headers of the readable files (for the refusal SR), unreadable ones skipped."""
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if all(k in ds for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")):
                out.append(ds)
        except Exception:  # noqa: BLE001 - damaged client data: leave it out
            continue
    return out


class DicomGateway:
    def __init__(self, service: Any, settings: Any, loop: asyncio.AbstractEventLoop):
        self.service = service
        self.settings = settings
        self.loop = loop
        self.metrics = DicomMetrics(service.metrics.registry)
        work = Path(settings.dicom_work_dir)
        self.spool = Spool(work, settings.series_stable_s, settings.dicom_max_series_per_study)
        destinations = parse_destinations(settings.dicom_destinations, settings.dicom_ae_title,
                                          settings.dicom_send_timeout_s)
        policy = RetryPolicy(settings.dicom_retry_base_s, settings.dicom_retry_max_s,
                             settings.dicom_retry_max_attempts)
        self.outbox = Outbox(work / "outbox", destinations, policy, self.metrics)
        self.listener = Listener(settings, self.spool, self.metrics)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    # --- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        for batch in self.spool.recover():
            self._submit(batch)
        self.outbox.start()
        self.listener.start()
        self._watcher = threading.Thread(target=self._watch, name="ich-dicom-stable", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        self.listener.stop()
        if self._watcher is not None:
            self._watcher.join(5)
        self.outbox.stop()

    def _watch(self) -> None:
        period = min(0.25, self.settings.series_stable_s / 4)
        while not self._stop.wait(period):
            try:
                for batch in self.spool.take_stable():
                    self._submit(batch)
                self.metrics.spooled_series.set(self.spool.pending())
            except Exception as exc:  # noqa: BLE001 - the watcher must keep running
                log.error("stable-series watcher error", extra={"error_type": type(exc).__name__})

    def _submit(self, batch: Batch) -> None:
        future = asyncio.run_coroutine_threadsafe(self.analyse(batch), self.loop)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    # --- analysis -----------------------------------------------------------------------------------------
    async def analyse(self, batch: Batch) -> str:
        """Analyse one stable batch; returns the outcome (``analysed``, ``already_analysed`` or a refusal code)."""
        t0 = time.perf_counter()
        series = pseudonym(batch.series_uid)
        files = batch.files()
        digest = source_digest(f.stem for f in files)  # file stems are digests of the SOP Instance UIDs
        if self.spool.already_done(batch, digest):
            self.spool.finish(batch, None)
            self.metrics.series.labels("already_analysed").inc()
            log.info("series already analysed; not analysed again", extra={"series": series})
            return "already_analysed"
        outcome = "analysed"
        try:
            document = await self._predict(batch, files)
            rendered = await asyncio.gather(*(self.service.file(document.id, name) for name in RESULT_FILES))
            payload = {name: data for name, data in zip(RESULT_FILES, rendered, strict=True) if data is not None}
            self.outbox.enqueue(payload, f"{document.id}-result")
            log.info("series analysed", extra={"series": series, "prediction_id": document.id,
                                               "slices": len(files)})
        except (IngestionError, Problem) as exc:
            outcome = str(exc.code)
            log.warning("series refused", extra={"series": series, "code": outcome, "slices": len(files)})
            await self._send_refusal(files, outcome)
        except Exception as exc:  # noqa: BLE001 - one series never stops the gateway
            outcome = "internal_error"
            log.error("series analysis failed", extra={"series": series, "error_type": type(exc).__name__})
        finally:
            self.spool.finish(batch, digest if outcome != "internal_error" else None)
        self.metrics.series.labels(outcome).inc()
        self.metrics.receive_to_result.observe(time.perf_counter() - t0)
        return outcome

    async def _predict(self, batch: Batch, files: list[Path]) -> Any:
        retry_s = float(self.settings.retry_after_s)
        while True:
            try:
                async with self.service.admit() as admission:
                    admission.upload = SpoolUpload(directory=batch.directory, files=files)
                    return await self.service.predict(admission, series_instance_uid=batch.series_uid,
                                                      onset_to_ct_hours=None)
            except Problem as exc:
                if exc.code not in RETRY_CODES or self._stop.is_set():
                    raise
            await asyncio.sleep(retry_s)

    async def _send_refusal(self, files: list[Path], code: str) -> None:
        loop = asyncio.get_running_loop()
        headers = await loop.run_in_executor(self.service.cpu_pool, _headers, files)
        if not headers:
            log.warning("refusal SR not sent: no header of the series is readable", extra={"code": code})
            return
        predictor = self.service.predictor
        name = predictor.weights.name if predictor is not None else "ich-expansion"
        version = predictor.weights.version if predictor is not None else "unknown"
        uids = ResultUids.for_sources((str(h.SOPInstanceUID) for h in headers), name, version)
        data = await loop.run_in_executor(self.service.cpu_pool,
                                          lambda: sr_bytes(build_refusal_sr(headers, code, uids)))
        self.outbox.enqueue({"sr.dcm": data}, f"refused-{code}")
