"""The prediction pipeline behind the API: admission control, thread pools and the single model worker.

* At most ``max_in_flight`` prediction requests are admitted (upload to stored result); others get 503 with
  ``Retry-After`` at once, so memory stays bounded and nothing piles up.
* Reading/decoding DICOM, preprocessing, inverse mapping and file rendering run in a thread pool of
  ``preprocess_threads`` (off the event loop, so health checks stay responsive).
* The model runs in one dedicated thread per device, so the next request's preprocessing overlaps the current
  forward pass. A CUDA out-of-memory error fails only that request (503 ``out_of_memory``).
* Work is a task that owns its admission slot and temp folder: a request that times out answers 503 at once,
  and its slot and files are released when the work really stops (after the current stage).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.api.logging_config import pseudonym
from app.api.metrics import ServiceMetrics
from app.api.problems import Problem
from app.api.settings import ServiceSettings
from app.api.store import ResultStore
from app.api.uploads import Upload
from app.errors import IngestionError, RefusalCode
from app.inference import EXPANSION_DEFINITION, InferenceOutOfMemory, PredictionResult, Predictor
from app.model.postprocessing import result_warnings
from app.outputs import CompactResult

RENDER_STAGES = {"mask.nii.gz": "render_nifti", "seg.dcm": "render_seg", "overlay.png": "render_png"}

log = logging.getLogger("app.api.service")


@dataclass
class Job:
    upload: Upload
    series_instance_uid: str | None
    onset_to_ct_hours: float | None
    cancelled: bool = False


class PredictionService:
    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self.store = ResultStore(settings.result_max_items, settings.result_max_bytes, settings.result_ttl_s)
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
                                                                  compile=s.compile)
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

    # --- admission ---------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def saturated(self) -> bool:
        """Every admission slot is taken: a new prediction would be refused with 503 ``overloaded``."""
        return self._in_flight >= self.settings.max_in_flight

    def try_admit(self) -> bool:
        if self.saturated:
            self.metrics.rejected.labels("capacity").inc()
            return False
        self._in_flight += 1
        self.metrics.in_flight.set(self._in_flight)
        return True

    def release(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.set(self._in_flight)

    def overloaded(self) -> Problem:
        return Problem("overloaded", f"At most {self.settings.max_in_flight} predictions are processed at once",
                       headers={"Retry-After": str(self.settings.retry_after_s)})

    # --- pipeline ----------------------------------------------------------------------------------------
    async def _cpu(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.cpu_pool, lambda: fn(*args, **kwargs))

    def _stage(self, timings: dict[str, float], name: str, start: float) -> None:
        ms = round((time.perf_counter() - start) * 1000.0, 3)
        timings[name] = ms
        self.metrics.stage_latency.labels(name).observe(ms / 1000.0)

    async def run(self, job: Job, base_url: str) -> dict[str, Any]:
        """The whole pipeline for one admitted job; releases the slot and removes temp files at the end."""
        from app.ingestion import ArchiveLimits, load_series

        try:
            predictor = self.predictor
            assert predictor is not None
            s = self.settings
            limits = ArchiveLimits(
                max_members=s.max_archive_members,
                max_total_bytes=s.max_uncompressed_bytes,
                max_compression_ratio=s.max_compression_ratio,
            )
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            series = await self._cpu(
                self._read_backstopped, load_series, [str(p) for p in job.upload.files],
                series_instance_uid=job.series_instance_uid, limits=limits,
            )
            self._stage(timings, "read", t0)
            job.upload.cleanup()  # the instances are in memory now
            self._check(job)
            t0 = time.perf_counter()
            prepared = await self._cpu(predictor.prepare, series)
            self._stage(timings, "preprocess", t0)
            self._check(job)
            loop = asyncio.get_running_loop()
            self._waiting_for_model += 1
            self.metrics.inference_queue.set(self._waiting_for_model)
            try:
                raw = await loop.run_in_executor(self.model_pool, predictor.infer, prepared.tensor)
            except InferenceOutOfMemory as exc:
                self.metrics.oom.inc()
                raise Problem("out_of_memory", str(exc), headers={"Retry-After": str(s.retry_after_s)}) from None
            finally:
                self._waiting_for_model -= 1
                self.metrics.inference_queue.set(self._waiting_for_model)
            timings["inference"] = raw.inference_ms
            self.metrics.stage_latency.labels("inference").observe(raw.inference_ms / 1000.0)
            self._check(job)
            t0 = time.perf_counter()
            result: PredictionResult = await self._cpu(predictor.finish, series, prepared, raw)
            self._stage(timings, "postprocess", t0)
            t0 = time.perf_counter()
            # files are rendered lazily on their first GET; the POST path only packs the mask (~10 ms)
            compact = await self._cpu(compact_outputs, predictor, series, result)
            self._stage(timings, "outputs", t0)
            pid = uuid.uuid4().hex
            body = build_response(pid, predictor, series, result, timings, job.onset_to_ct_hours, base_url)
            self.store.put(pid, body, compact=compact)
            self._update_store_metrics()
            log.info("prediction done", extra={
                "prediction_id": pid, "series": pseudonym(series.series_instance_uid),
                "slices": series.slice_count, "timings_ms": body["timings_ms"],
            })
            return body
        finally:
            job.upload.cleanup()
            self.release()

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

    def _update_store_metrics(self) -> None:
        stats = self.store.stats()
        self.metrics.store_items.set(stats["items"])
        self.metrics.store_bytes.set(stats["bytes"])

    async def file(self, prediction_id: str, name: str) -> bytes | None:
        """A result file, rendered on first request in the CPU pool and cached in the store; ``None`` when the
        prediction is unknown or expired."""
        t0 = time.perf_counter()
        entry = self.store.get(prediction_id)
        if entry is None:
            return None
        if name in entry.files:
            return entry.files[name]
        missing = entry.compact.unavailable(name) if isinstance(entry.compact, CompactResult) else None
        if missing is not None:
            raise Problem(missing.code, missing.reason)
        data = await self._cpu(self.store.get_file, prediction_id, name)
        self.metrics.stage_latency.labels(RENDER_STAGES.get(name, "render")).observe(time.perf_counter() - t0)
        self._update_store_metrics()
        return data

    @staticmethod
    def _check(job: Job) -> None:
        if job.cancelled:
            raise asyncio.CancelledError


def compact_outputs(predictor: Predictor, series: Any, result: PredictionResult) -> CompactResult:
    """The compact form the result files are rendered from (CPU, ~10 ms)."""
    w = predictor.weights
    return CompactResult.from_prediction(series, result, algorithm_name=w.name, algorithm_version=w.version)


def render_files(predictor: Predictor, series: Any, result: PredictionResult) -> dict[str, bytes]:
    """NIfTI mask, DICOM SEG and PNG overview as bytes (CPU), as ``python -m app predict`` writes them; without
    source instances (a NIfTI input) there is no SEG (:meth:`CompactResult.unavailable` says why)."""
    return compact_outputs(predictor, series, result).render_all()


def build_response(
    pid: str,
    predictor: Predictor,
    series: Any,
    result: PredictionResult,
    timings: dict[str, float],
    onset_to_ct_hours: float | None,
    base_url: str,
) -> dict[str, Any]:
    """The JSON body (see :class:`app.api.schemas.PredictionResponse`)."""
    w = predictor.weights
    definition = str(w.manifest.get("expansion_definition", EXPANSION_DEFINITION)) if isinstance(
        w.manifest, dict) else EXPANSION_DEFINITION
    prefix = f"{base_url}/v1/predictions/{pid}"
    timings = dict(timings)
    timings["total"] = round(sum(v for k, v in timings.items()), 3)
    warnings = [*series.warnings, *result_warnings(result, predictor.postprocessing)]
    return {
        "id": pid,
        "model": {"name": w.name, "version": w.version, "sha256": w.weights_sha256},
        "input": {
            "study_instance_uid": series.study_instance_uid,
            "series_instance_uid": series.series_instance_uid,
            "slice_count": series.slice_count,
            "source_kind": series.source_kind,
            "spacing_mm": [float(v) for v in series.spacing_zyx],
            "onset_to_ct_hours": onset_to_ct_hours,
            "warnings": [wr.as_dict() for wr in warnings],
        },
        "expansion": {
            "probability": result.probability,
            "raw_probability": result.raw_probability,
            "threshold": result.threshold,
            "predicted": result.predicted,
            "reason": result.reason,
            "definition": definition,
        },
        "haematoma": {
            "detected": result.detected,
            "volume_ml": result.volume_ml,
            "abc2_volume_ml": result.abc2_volume_ml,
            "voxel_count": result.voxel_count,
            "touches_fov_edge": result.touches_fov_edge,
            "infratentorial": result.infratentorial,
        },
        "links": {
            "self": prefix,
            "mask_nifti": f"{prefix}/mask.nii.gz",
            "seg_dicom": f"{prefix}/seg.dcm" if series.source_headers else None,  # a NIfTI input has no SEG
            "overlay_png": f"{prefix}/overlay.png",
        },
        "timings_ms": timings,
    }
