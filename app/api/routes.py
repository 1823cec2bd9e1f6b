"""HTTP routes (thin: parsing and answers only; the work is in :mod:`app.api.service`, the result document in
:mod:`app.result`). Dependencies come from :mod:`app.api.deps`."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import MetricsDep, ServiceDep, require_api_key
from app.api.jobs import JobStatusResponse, status_body, wants_async
from app.api.problems import Problem, problem_response
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


ACCEPTED = {"model": JobStatusResponse, "description": "Asynchronous prediction in progress (`Prefer: "
            "respond-async`): poll `Location` after `Retry-After` seconds"}


def _in_progress(state: object, service: ServiceDep) -> JSONResponse:
    body = status_body(state)  # type: ignore[arg-type]
    return JSONResponse(body, status_code=202, headers={
        "Location": body["links"]["self"], "Retry-After": str(service.settings.job_poll_after_s)})


def build_router() -> APIRouter:
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @v1.post("/predictions", response_model=PredictionResponse,
             responses={202: ACCEPTED, 400: {}, 401: {}, 413: {}, 415: {}, 422: {}, 503: {}})
    async def create_prediction(request: Request, response: Response,
                                service: ServiceDep) -> PredictionResponse | JSONResponse:
        """Analyse one head-CT series. Body: multipart/form-data (`files` parts, optional
        `series_instance_uid`, `onset_to_ct_hours`), application/zip, multipart/related STOW-RS, or one HU NIfTI
        volume (`.nii`/`.nii.gz`, as a `files` part or an application/gzip / application/x-nifti body).
        With `Prefer: respond-async` the answer is 202 once the upload is received (`Location` to poll)."""
        respond_async = wants_async(request.headers.get("prefer"))
        async with service.admit() as admission:
            upload = await service.receive(admission, request.headers.get("content-type"),
                                           request.headers.get("content-length"), request.stream())
            fields, query = upload.fields, request.query_params
            series_uid = fields.get("series_instance_uid") or query.get("series_instance_uid")
            onset = _parse_onset(fields.get("onset_to_ct_hours") or query.get("onset_to_ct_hours"))
            if not upload.files:
                raise Problem("empty_input", "The request holds no files", status=400)
            if respond_async:
                state = await service.jobs.submit(admission, series_instance_uid=series_uid or None,
                                                  onset_to_ct_hours=onset)
                accepted = _in_progress(state, service)
                accepted.headers["Preference-Applied"] = "respond-async"
                return accepted
            document = await service.predict(admission, series_instance_uid=series_uid or None,
                                             onset_to_ct_hours=onset)
        response.headers["Location"] = document.links.self
        return document

    @v1.get("/predictions/{prediction_id}", response_model=PredictionResponse,
            responses={202: ACCEPTED, 404: {}, 503: {}})
    async def get_prediction(prediction_id: str, request: Request,
                             service: ServiceDep) -> PredictionResponse | JSONResponse:
        """The result (200); for an asynchronous prediction, 202 while `queued` or `running` and the failure's
        problem+json when it failed. Any replica answers: results and job states live in the store."""
        document = await service.result(prediction_id)
        if document is not None:
            return document
        state = await service.jobs.status(prediction_id)
        if state is None or state.status == "done":  # unknown, expired, or done and since evicted
            raise _not_found()
        if state.status == "failed" and state.problem is not None:
            p = state.problem
            return problem_response(request, status=p["status"], code=p["code"], title=p["title"],
                                    detail=p["detail"], headers=state.headers, extra=p.get("extra") or None)
        return _in_progress(state, service)

    def _file_route(name: str) -> None:
        async def get_file(prediction_id: str, service: ServiceDep) -> Response:
            data = await service.file(prediction_id, name)
            if data is None:
                raise _not_found()
            return Response(data, media_type=FILE_TYPES[name],
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

        v1.add_api_route(f"/predictions/{{prediction_id}}/{name}", get_file, methods=["GET"],
                         name=f"get_{name.replace('.', '_')}", responses={404: {}, 409: {}, 503: {}})

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
        store_failure = await service.store_failure()
        if store_failure is not None:
            return JSONResponse({"status": "store_unavailable", "detail": store_failure}, status_code=503,
                                headers=service.retry_after())
        if service.saturated:
            return JSONResponse({"status": "saturated", "detail": f"all {service.settings.max_in_flight} "
                                 "prediction slots are in use"}, status_code=503, headers=service.retry_after())
        return JSONResponse({"status": "ready"})

    async def reads_ready(service: ServiceDep) -> JSONResponse:
        """200 while stored results can be read (the store answers), whatever the model's state and however
        many prediction slots are taken; 503 + Retry-After without the store. A balancer routes reads by this
        check and new predictions by ``/health/ready``, so polling never stops while every slot is busy."""
        store_failure = await service.store_failure()
        if store_failure is not None:
            return JSONResponse({"status": "store_unavailable", "detail": store_failure}, status_code=503,
                                headers=service.retry_after())
        return JSONResponse({"status": "ready"})

    health.add_api_route("/health/reads", reads_ready, methods=["GET"], responses={503: {}})
    for prefix in ("/health", "/v2/health"):
        health.add_api_route(f"{prefix}/live", live, methods=["GET"], response_model=HealthResponse)
        health.add_api_route(f"{prefix}/ready", ready, methods=["GET"], responses={503: {}})

    @health.get("/metrics", include_in_schema=False)
    async def metrics(service: ServiceDep, m: MetricsDep) -> Response:
        await service.refresh_store_metrics()
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
