"""HTTP routes (thin: parsing and answers only; the work is in :mod:`app.api.service`, the result document in
:mod:`app.result`). Dependencies come from :mod:`app.api.deps`."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import MetricsDep, ServiceDep, require_api_key
from app.api.problems import Problem
from app.api.schemas import HealthResponse, PredictionResponse

FILE_TYPES = {
    "mask.nii.gz": "application/gzip",
    "seg.dcm": "application/dicom",
    "overlay.png": "image/png",
    "sr.dcm": "application/dicom",
    "summary.dcm": "application/dicom",
}


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


def _not_found() -> Problem:
    return Problem("not_found", "No such prediction (unknown or expired)")


def build_router() -> APIRouter:
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @v1.post("/predictions", response_model=PredictionResponse,
             responses={400: {}, 401: {}, 413: {}, 415: {}, 422: {}, 503: {}})
    async def create_prediction(request: Request, response: Response, service: ServiceDep) -> PredictionResponse:
        """Analyse one head-CT series. Body: multipart/form-data (`files` parts, optional
        `series_instance_uid`, `onset_to_ct_hours`), application/zip, multipart/related STOW-RS, or one HU NIfTI
        volume (`.nii`/`.nii.gz`, as a `files` part or an application/gzip / application/x-nifti body)."""
        async with service.admit() as admission:
            upload = await service.receive(admission, request.headers.get("content-type"),
                                           request.headers.get("content-length"), request.stream())
            fields, query = upload.fields, request.query_params
            series_uid = fields.get("series_instance_uid") or query.get("series_instance_uid")
            onset = _parse_onset(fields.get("onset_to_ct_hours") or query.get("onset_to_ct_hours"))
            if not upload.files:
                raise Problem("empty_input", "The request holds no files", status=400)
            document = await service.predict(admission, series_instance_uid=series_uid or None,
                                             onset_to_ct_hours=onset)
        response.headers["Location"] = document.links.self
        return document

    @v1.get("/predictions/{prediction_id}", response_model=PredictionResponse, responses={404: {}})
    async def get_prediction(prediction_id: str, service: ServiceDep) -> PredictionResponse:
        entry = service.store.get(prediction_id)
        if entry is None:
            raise _not_found()
        return entry.result

    def _file_route(name: str) -> None:
        async def get_file(prediction_id: str, service: ServiceDep) -> Response:
            data = await service.file(prediction_id, name)
            if data is None:
                raise _not_found()
            return Response(data, media_type=FILE_TYPES[name],
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

        v1.add_api_route(f"/predictions/{{prediction_id}}/{name}", get_file, methods=["GET"],
                         name=f"get_{name.replace('.', '_')}", responses={404: {}, 409: {}})

    for fname in FILE_TYPES:
        _file_route(fname)

    @v1.get("/model")
    async def get_model(service: ServiceDep) -> JSONResponse:
        """The registered manifest of the served weights (version, plans, metrics, threshold, intended use) and
        the post-processing in effect (detection, calibration, infratentorial; defaults filled in)."""
        return JSONResponse(service.describe())

    return v1


def build_health_router() -> APIRouter:
    health = APIRouter()

    async def live() -> HealthResponse:
        return HealthResponse(status="alive")

    async def ready(service: ServiceDep) -> JSONResponse:
        """200 when the model is loaded and warm and a prediction slot is free; 503 + Retry-After while
        loading or while every slot is taken (``in_flight >= max_in_flight``), so a load balancer sends new
        work elsewhere until capacity returns."""
        if not service.ready:
            return JSONResponse({"status": "not_ready", "detail": service.not_ready_reason}, status_code=503,
                                headers=service.retry_after())
        if service.saturated:
            return JSONResponse({"status": "saturated", "detail": f"all {service.settings.max_in_flight} "
                                 "prediction slots are in use"}, status_code=503, headers=service.retry_after())
        return JSONResponse({"status": "ready"})

    for prefix in ("/health", "/v2/health"):
        health.add_api_route(f"{prefix}/live", live, methods=["GET"], response_model=HealthResponse)
        health.add_api_route(f"{prefix}/ready", ready, methods=["GET"], responses={503: {}})

    @health.get("/metrics", include_in_schema=False)
    async def metrics(service: ServiceDep, m: MetricsDep) -> Response:
        service.update_store_metrics()
        return Response(m.render(), media_type=m.content_type)

    return health


def include_routes(app: FastAPI) -> None:
    """The health routes (open) and ``/v1`` (behind :func:`app.api.deps.require_api_key`); the web page and the
    slice viewer's routes (:mod:`app.api.viewer`)."""
    from app.api.comparisons import build_comparison_router
    from app.api.viewer import install_ui

    app.include_router(build_health_router())
    app.include_router(build_router())
    app.include_router(build_comparison_router())
    install_ui(app)
