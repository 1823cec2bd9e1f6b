"""HTTP routes (thin: parsing and answers only; the work is in :mod:`app.api.service`)."""

from __future__ import annotations

import asyncio
import math
import time

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app.api.problems import Problem
from app.api.schemas import HealthResponse, PredictionResponse
from app.api.service import Job, PredictionService
from app.api.uploads import receive_upload

FILE_TYPES = {
    "mask.nii.gz": "application/gzip",
    "seg.dcm": "application/dicom",
    "overlay.png": "image/png",
}


def _service(request: Request) -> PredictionService:
    return request.app.state.service


def _parse_onset(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        hours = float(value)
    except ValueError:
        raise Problem("validation_error", "onset_to_ct_hours must be a number of hours") from None
    if not math.isfinite(hours) or hours < 0 or hours > 24 * 365:
        raise Problem("validation_error", "onset_to_ct_hours must be between 0 and 8760")
    return hours


def build_router(auth: Depends) -> APIRouter:  # type: ignore[valid-type]
    v1 = APIRouter(prefix="/v1", dependencies=[auth])

    @v1.post("/predictions", response_model=PredictionResponse,
             responses={400: {}, 401: {}, 413: {}, 415: {}, 422: {}, 503: {}})
    async def create_prediction(request: Request) -> JSONResponse:
        """Analyse one head-CT series. Body: multipart/form-data (`files` parts, optional
        `series_instance_uid`, `onset_to_ct_hours`), application/zip, multipart/related STOW-RS, or one HU NIfTI
        volume (`.nii`/`.nii.gz`, as a `files` part or an application/gzip / application/x-nifti body)."""
        service = _service(request)
        s = service.settings
        if not service.ready:
            raise Problem("not_ready", service.not_ready_reason, headers={"Retry-After": str(s.retry_after_s)})
        if not service.try_admit():
            raise service.overloaded()
        deadline = time.monotonic() + s.request_timeout_s
        try:
            upload = await asyncio.wait_for(
                receive_upload(request.headers.get("content-type"), request.headers.get("content-length"),
                               request.stream(), max_body_bytes=s.max_body_bytes, max_files=s.max_files,
                               upload_dir=s.upload_dir),
                timeout=s.request_timeout_s,
            )
        except TimeoutError:
            service.release()
            raise Problem("request_timeout", "The upload did not complete within the time limit") from None
        except BaseException:
            service.release()
            raise
        try:
            series_uid = upload.fields.get("series_instance_uid") or request.query_params.get("series_instance_uid")
            onset = _parse_onset(upload.fields.get("onset_to_ct_hours")
                                 or request.query_params.get("onset_to_ct_hours"))
            if not upload.files:
                raise Problem("empty_input", "The request holds no files", status=400)
        except BaseException:
            upload.cleanup()
            service.release()
            raise
        job = Job(upload=upload, series_instance_uid=series_uid or None, onset_to_ct_hours=onset)
        task = asyncio.ensure_future(service.run(job, base_url=""))  # owns the slot and the files from here
        try:
            body = await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            job.cancelled = True
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieve, never warn
            raise Problem("processing_timeout", f"The prediction took longer than {s.request_timeout_s} s",
                          headers={"Retry-After": str(s.retry_after_s)}) from None
        except asyncio.CancelledError:  # client went away: stop after the current stage
            job.cancelled = True
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise
        return JSONResponse(body, headers={"Location": body["links"]["self"]})

    @v1.get("/predictions/{prediction_id}", response_model=PredictionResponse, responses={404: {}})
    async def get_prediction(prediction_id: str, request: Request) -> JSONResponse:
        entry = _service(request).store.get(prediction_id)
        if entry is None:
            raise Problem("not_found", "No such prediction (unknown or expired)")
        return JSONResponse(entry.result)

    def _file_route(name: str) -> None:
        async def get_file(prediction_id: str, request: Request) -> Response:
            data = await _service(request).file(prediction_id, name)
            if data is None:
                raise Problem("not_found", "No such prediction (unknown or expired)")
            return Response(data, media_type=FILE_TYPES[name],
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

        v1.add_api_route(f"/predictions/{{prediction_id}}/{name}", get_file, methods=["GET"],
                         name=f"get_{name.replace('.', '_')}", responses={404: {}, 409: {}})

    for fname in FILE_TYPES:
        _file_route(fname)

    @v1.get("/model")
    async def get_model(request: Request) -> JSONResponse:
        """The registered manifest of the served weights (version, plans, metrics, threshold, intended use) and
        the post-processing in effect (detection, calibration, infratentorial; defaults filled in)."""
        service = _service(request)
        if service.predictor is None:
            raise Problem("not_ready", service.not_ready_reason,
                          headers={"Retry-After": str(service.settings.retry_after_s)})
        from app.model.unet import count_parameters

        p = service.predictor
        w = p.weights
        body = dict(w.manifest) if isinstance(w.manifest, dict) else {}
        body.update({
            "name": w.name, "version": w.version, "sha256": w.weights_sha256, "threshold": w.threshold,
            "plans": w.plans.model_dump(mode="json"), "config": w.config.model_dump(mode="json"),
            "parameter_count": count_parameters(p.model), "device": str(p.device),
            "runtime": p.runner.describe(), "postprocessing": p.postprocessing.model_dump(mode="json"),
        })
        return JSONResponse(body)

    return v1


def build_health_router() -> APIRouter:
    health = APIRouter()

    async def live() -> HealthResponse:
        return HealthResponse(status="alive")

    async def ready(request: Request) -> JSONResponse:
        """200 when the model is loaded and warm and a prediction slot is free; 503 + Retry-After while
        loading or while every slot is taken (``in_flight >= max_in_flight``), so a load balancer sends new
        work elsewhere until capacity returns."""
        service = _service(request)
        retry = {"Retry-After": str(service.settings.retry_after_s)}
        if not service.ready:
            return JSONResponse({"status": "not_ready", "detail": service.not_ready_reason}, status_code=503,
                                headers=retry)
        if service.saturated:
            return JSONResponse({"status": "saturated", "detail": f"all {service.settings.max_in_flight} "
                                 "prediction slots are in use"}, status_code=503, headers=retry)
        return JSONResponse({"status": "ready"})

    for prefix in ("/health", "/v2/health"):
        health.add_api_route(f"{prefix}/live", live, methods=["GET"], response_model=HealthResponse)
        health.add_api_route(f"{prefix}/ready", ready, methods=["GET"], responses={503: {}})

    @health.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        m = request.app.state.metrics
        stats = _service(request).store.stats()
        m.store_items.set(stats["items"])
        m.store_bytes.set(stats["bytes"])
        return Response(m.render(), media_type=m.content_type)

    return health


def include_routes(app: FastAPI, auth: Depends) -> None:  # type: ignore[valid-type]
    app.include_router(build_health_router())
    app.include_router(build_router(auth))
