"""The prediction pipeline behind the API: admission control, thread pools and the single model worker.

* At most ``max_in_flight`` prediction requests are admitted (upload to stored result); others get 503 with
  ``Retry-After`` at once, so memory stays bounded and nothing piles up. ``async with service.admit()`` holds
  one slot (:class:`Admission`) and always gives it back, with the upload's temporary files.
* Reading/decoding DICOM, preprocessing, inverse mapping and file rendering run in a thread pool of
  ``preprocess_threads`` (off the event loop, so health checks stay responsive).
* The model runs in one dedicated thread per device, so the next request's preprocessing overlaps the current
  forward pass. A CUDA out-of-memory error fails only that request (503 ``out_of_memory``).
* Work is a task that outlives its request when it must: a request that times out (``request_timeout_s`` for
  upload and processing together) answers 503 at once, and its slot and files are released when the work really
  stops (after the current stage).
* The result document and files are built by :mod:`app.result` (the core, shared with ``python -m app
  predict``); stage timings (ms) are the predictor's own plus the service's ``read`` and ``outputs``.
* Results live in the store named by ``ICH_STORE_URL`` (:func:`app.api.store.open_store`; memory or Redis),
  called in a small thread pool; a store that fails answers 503 ``store_unavailable``. Asynchronous requests
  are :class:`app.api.jobs.AsyncJobs` (``service.jobs``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from app.api.jobs import AsyncJobs
from app.api.logging_config import pseudonym
from app.api.metrics import ServiceMetrics
from app.api.problems import Problem
from app.api.settings import ServiceSettings
from app.api.store import StoreUnavailable, open_store
from app.api.uploads import Upload, receive_upload
from app.comparison import subject_of, subject_store_key
from app.errors import IngestionError, RefusalCode
from app.inference import InferenceOutOfMemory, PredictionResult, Predictor
from app.outputs.compact import OutputUnavailable
from app.result import PredictionResponse, StageTimings, build_document, compact_outputs, render_files

__all__ = ["Admission", "Job", "PredictionService", "build_response", "compact_outputs", "render_files"]

RENDER_STAGES = {"mask.nii.gz": "render_nifti", "seg.dcm": "render_seg", "overlay.png": "render_png",
                 "sr.dcm": "render_sr", "summary.dcm": "render_summary"}

log = logging.getLogger("app.api.service")


@dataclass
class Job:
    upload: Upload
    series_instance_uid: str | None
    onset_to_ct_hours: float | None
    cancelled: bool = False


@dataclass
class Admission:
    """One admitted prediction request (from :meth:`PredictionService.admit`): its deadline (``time.monotonic``
    seconds), its upload once received, and the work task once started. The slot and the upload's files are
    released when the request leaves ``admit()``, or, when the work outlives the request, when the work stops."""

    deadline: float
    upload: Upload | None = None
    work: asyncio.Future[Any] | None = None

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done callback of abandoned work: fetch its outcome so asyncio never warns it was not retrieved."""
    if not task.cancelled():
        task.exception()


class PredictionService:
    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self.store = open_store(settings)
        # what POST /v1/comparisons needs of each prediction (app.comparison.ScanSubject, under subject_store_key):
        # the same backend, as many entries and as long as the results, kept apart so it does not count against them
        self.subjects = open_store(settings, namespace="subjects", max_bytes=settings.result_max_items * 4096)
        self.store_pool = ThreadPoolExecutor(4, thread_name_prefix="ich-store")
        self.jobs = AsyncJobs(self)
        self.predictor: Predictor | None = None
        self.ready = False
        self.not_ready_reason = "loading model"
        self.cpu_pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="ich-cpu")
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="ich-model")
        self._in_flight = 0
        self._waiting_for_model = 0

    # --- life cycle --------------------------------------------------------------------------------------
    def load(self, predictor: Predictor | None = None) -> None:
        """Load weights (checksums verified by the registry), warm up, then report ready. Blocking."""
        s = self.settings
        try:
            t0 = time.perf_counter()
            self.predictor = predictor or Predictor.from_registry(s.weights_dir, s.weights_version, s.device, s.amp,
                                                                  compile=s.compile, tta_passes=s.tta_passes)
            if s.warmup_passes:
                self.predictor.warm_up(s.warmup_passes)
            info = self.predictor.model_summary()
            self.metrics.model.info({k: str(v) for k, v in info.items()})
            self.ready = True
            self.metrics.ready.set(1)
            log.info("model ready", extra={"model": info, "load_s": round(time.perf_counter() - t0, 3)})
        except Exception as exc:
            self.not_ready_reason = f"model failed to load: {type(exc).__name__}: {exc}"
            log.error("model failed to load", extra={"error": str(exc), "error_type": type(exc).__name__})

    def close(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        self.cpu_pool.shutdown(wait=True, cancel_futures=False)
        self.model_pool.shutdown(wait=True, cancel_futures=False)
        self.store_pool.shutdown(wait=True, cancel_futures=False)
        self.store.close()

    # --- admission ---------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def saturated(self) -> bool:
        """Every admission slot is taken: a new prediction would be refused with 503 ``overloaded``."""
        return self._in_flight >= self.settings.max_in_flight

    def try_admit(self) -> bool:
        """Take a slot when one is free (the primitive under :meth:`admit`); a refusal is counted."""
        if self.saturated:
            self.metrics.rejected.labels("capacity").inc()
            return False
        self._in_flight += 1
        self.metrics.in_flight.set(self._in_flight)
        return True

    def release(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.set(self._in_flight)

    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}

    def overloaded(self) -> Problem:
        return Problem("overloaded", f"At most {self.settings.max_in_flight} predictions are processed at once",
                       headers=self.retry_after())

    def require_ready(self) -> None:
        """Raise 503 ``not_ready`` (with Retry-After) while the model is loading or failed to load."""
        if not self.ready:
            raise Problem("not_ready", self.not_ready_reason, headers=self.retry_after())

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Admission]:
        """``async with service.admit() as admission:`` one prediction slot for the request.

        Raises 503 ``not_ready`` before the model is ready and 503 ``overloaded`` (Retry-After) when every slot is
        taken. On leaving, by any path, the slot and the upload's temporary files are released; when the work
        task (:meth:`predict`) outlives the request (a timeout, a client gone), they are released when it stops."""
        self.require_ready()
        if not self.try_admit():
            raise self.overloaded()
        admission = Admission(deadline=time.monotonic() + self.settings.request_timeout_s)
        try:
            yield admission
        finally:
            work = admission.work
            if work is not None and not work.done():
                work.add_done_callback(lambda _task: self._release_admission(admission))
            else:
                self._release_admission(admission)

    def _release_admission(self, admission: Admission) -> None:
        if admission.upload is not None:
            admission.upload.cleanup()
        self.release()

    # --- request steps -----------------------------------------------------------------------------------
    async def receive(self, admission: Admission, content_type: str | None, content_length: str | None,
                      body: AsyncIterable[bytes]) -> Upload:
        """Stream the request body to a temporary folder (owned by ``admission`` from here) within the time
        left; 408 ``request_timeout`` when the upload does not complete in time."""
        s = self.settings
        try:
            upload = await asyncio.wait_for(
                receive_upload(content_type, content_length, body, max_body_bytes=s.max_body_bytes,
                               max_files=s.max_files, upload_dir=s.upload_dir),
                timeout=admission.remaining_s(),
            )
        except TimeoutError:
            raise Problem("request_timeout", "The upload did not complete within the time limit") from None
        admission.upload = upload
        return upload

    async def predict(self, admission: Admission, *, series_instance_uid: str | None,
                      onset_to_ct_hours: float | None, base_url: str = "") -> PredictionResponse:
        """Run the pipeline on the admitted upload as a task that owns the slot and the files, and wait for it
        within the time left. On 503 ``processing_timeout`` or when the client goes away the task is told to
        stop after its current stage; the answer does not wait for it."""
        assert admission.upload is not None, "receive() the upload first"
        job = Job(upload=admission.upload, series_instance_uid=series_instance_uid,
                  onset_to_ct_hours=onset_to_ct_hours)
        task = asyncio.ensure_future(self.run(job, base_url=base_url))
        admission.work = task
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=admission.remaining_s())
        except TimeoutError:
            job.cancelled = True
            task.add_done_callback(_retrieve)
            raise Problem("processing_timeout", f"The prediction took longer than {self.settings.request_timeout_s} s",
                          headers=self.retry_after()) from None
        except asyncio.CancelledError:  # client went away: stop after the current stage
            job.cancelled = True
            task.add_done_callback(_retrieve)
            raise

    def describe(self) -> dict[str, Any]:
        """The answer of ``GET /v1/model`` (:meth:`Predictor.describe <app.inference.Predictor.describe>`);
        503 ``not_ready`` while no model is loaded."""
        if self.predictor is None:
            raise Problem("not_ready", self.not_ready_reason, headers=self.retry_after())
        return self.predictor.describe()

    # --- pipeline ----------------------------------------------------------------------------------------
    async def _cpu(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.cpu_pool, lambda: fn(*args, **kwargs))

    def _observe_stage(self, name: str, ms: float) -> None:
        self.metrics.stage_latency.labels(name).observe(ms / 1000.0)

    async def run(self, job: Job, base_url: str, prediction_id: str | None = None) -> PredictionResponse:
        """The whole pipeline for one admitted job (ingest, the predictor's three stages, the compact result),
        stored under ``prediction_id`` (default: a new id). The slot and the files belong to the :class:`Admission`; the upload is removed
        here as soon as the instances are in memory."""
        from app.ingestion import ArchiveLimits, load_series

        predictor = self.predictor
        assert predictor is not None
        s = self.settings
        limits = ArchiveLimits(
            max_members=s.max_archive_members,
            max_total_bytes=s.max_uncompressed_bytes,
            max_compression_ratio=s.max_compression_ratio,
        )
        timings = StageTimings(self._observe_stage)
        with timings.stage("read"):
            series = await self._cpu(
                self._read_backstopped, load_series, [str(p) for p in job.upload.files],
                series_instance_uid=job.series_instance_uid, limits=limits,
            )
        job.upload.cleanup()  # the instances are in memory now
        self._check(job)
        prepared = await self._cpu(predictor.prepare, series)
        self._check(job)
        loop = asyncio.get_running_loop()
        self._waiting_for_model += 1
        self.metrics.inference_queue.set(self._waiting_for_model)
        try:
            raw = await loop.run_in_executor(self.model_pool, predictor.infer, prepared.tensor)
        except InferenceOutOfMemory as exc:
            self.metrics.oom.inc()
            raise Problem("out_of_memory", str(exc), headers=self.retry_after()) from None
        finally:
            self._waiting_for_model -= 1
            self.metrics.inference_queue.set(self._waiting_for_model)
        self._check(job)
        result: PredictionResult = await self._cpu(predictor.finish, series, prepared, raw)
        timings.add_result(result)  # preprocess, inference, postprocess: as the predictor measured them
        with timings.stage("outputs"):
            # files are rendered lazily on their first GET; the POST path only packs the mask
            compact = await self._cpu(compact_outputs, predictor, series, result)
        pid = prediction_id or uuid.uuid4().hex
        document = build_document(pid, predictor, series, result, timings.ms, job.onset_to_ct_hours, base_url)
        compact = compact.with_document(document)  # the SR and the summary report the document's figures
        await self.stored(self.store.put, pid, document, compact=compact)
        await self.stored(self.subjects.put, subject_store_key(pid),
                          subject_of(pid, series, result, s.identity_key.encode() or None))
        await self.refresh_store_metrics()
        log.info("prediction done", extra={
            "prediction_id": pid, "series": pseudonym(series.series_instance_uid),
            "slices": series.slice_count, "timings_ms": document.timings_ms,
        })
        return document

    def _read_backstopped(self, load_series: Any, paths: list[str], **kwargs: Any) -> Any:
        """``load_series`` with a backstop: ingestion turns damaged client DICOM into refusals itself; a
        library exception that still escapes it is answered as 422 ``invalid_dicom`` and counted in
        ``ich_ingestion_backstop_total`` (by exception type, never its message, which may quote values)."""
        try:
            return load_series(paths, **kwargs)
        except (IngestionError, Problem):
            raise
        except Exception as exc:  # noqa: BLE001 - the backstop is the point
            self.metrics.backstop.labels("read", type(exc).__name__).inc()
            log.warning("ingestion backstop", extra={"stage": "read", "error_type": type(exc).__name__})
            raise Problem.from_ingestion(IngestionError(
                RefusalCode.INVALID_DICOM, "An uploaded DICOM object could not be read (damaged or malformed)",
            )) from None

    # --- the store ------------------------------------------------------------------------------------------
    def store_problem(self, exc: StoreUnavailable) -> Problem:
        return Problem("store_unavailable", f"The result store cannot be reached ({exc})", headers=self.retry_after())

    async def stored(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` (a store call) in the store thread pool; 503 ``store_unavailable`` (with
        Retry-After) when the store fails."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.store_pool, lambda: fn(*args, **kwargs))
        except StoreUnavailable as exc:
            raise self.store_problem(exc) from None

    async def store_failure(self) -> str | None:
        """Why the store cannot be used now (readiness), or None when it answers."""
        try:
            await self.stored(self.store.ping)
        except Problem as exc:
            return exc.detail
        return None

    def update_store_metrics(self) -> None:
        """Set the store gauges (items, bytes) from the store now (blocking; left as they were when the store
        fails)."""
        try:
            stats = self.store.stats()
        except StoreUnavailable:
            return
        self.metrics.store_items.set(stats["items"])
        self.metrics.store_bytes.set(stats["bytes"])

    async def refresh_store_metrics(self) -> None:
        """:meth:`update_store_metrics` off the event loop."""
        await asyncio.get_running_loop().run_in_executor(self.store_pool, self.update_store_metrics)

    async def result(self, prediction_id: str) -> PredictionResponse | None:
        """The stored result document; ``None`` when unknown or expired."""
        return await self.stored(self.store.get_result, prediction_id)

    async def file(self, prediction_id: str, name: str) -> bytes | None:
        """A result file, rendered on first request in the CPU pool and cached in the store; ``None`` when the
        prediction is unknown or expired; 409 with the code when this result cannot produce it."""
        t0 = time.perf_counter()
        try:
            data = await self._cpu(self.store.get_file, prediction_id, name)
        except OutputUnavailable as missing:
            raise Problem(missing.code, missing.reason) from None
        except StoreUnavailable as exc:
            raise self.store_problem(exc) from None
        if data is not None:
            self.metrics.stage_latency.labels(RENDER_STAGES.get(name, "render")).observe(time.perf_counter() - t0)
        await self.refresh_store_metrics()
        return data

    @staticmethod
    def _check(job: Job) -> None:
        if job.cancelled:
            raise asyncio.CancelledError


def build_response(
    pid: str,
    predictor: Predictor,
    series: Any,
    result: PredictionResult,
    timings: dict[str, float],
    onset_to_ct_hours: float | None,
    base_url: str,
) -> dict[str, Any]:
    """The result document as a JSON dict (:func:`app.result.build_document`, kept for existing callers)."""
    return build_document(pid, predictor, series, result, timings, onset_to_ct_hours, base_url).model_dump(mode="json")
