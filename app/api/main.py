"""FastAPI application factory: ``create_app(settings)``.

Start-up loads the weights through the registry (checksums verified) and runs a warm-up pass in a
background thread, so ``/health/live`` answers at once and ``/health/ready`` turns 200 only when the model is
loaded and warm. Shutdown (after uvicorn has drained in-flight requests on SIGTERM) stops the worker pools.

Unexpected exceptions (a bug, a failing forward pass) are answered inside the ``request_context`` middleware as
a 500 problem+json and counted in ``ich_unhandled_errors_total``; they are never re-raised to Starlette's
``ServerErrorMiddleware``, which would make uvicorn drop the client's keep-alive connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from app.api.logging_config import configure_logging, request_id_var
from app.api.metrics import ServiceMetrics
from app.api.problems import install_problem_handlers, problem_response
from app.api.routes import include_routes
from app.api.security import ApiKeyAuth
from app.api.service import PredictionService
from app.api.settings import ServiceSettings
from app.dicom_network import start_gateway
from app.inference import Predictor

log = logging.getLogger("app.api")


def create_app(settings: ServiceSettings | None = None, *, predictor: Predictor | None = None) -> FastAPI:
    """Build the service. ``predictor`` (tests, embedding) skips loading from ``settings.weights_dir``."""
    settings = settings or ServiceSettings()
    configure_logging(settings.log_level)
    metrics = ServiceMetrics()
    service = PredictionService(settings, metrics)
    auth = ApiKeyAuth(settings.api_key_entries())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.get_running_loop().run_in_executor(None, service.load, predictor)
        gateway = start_gateway(service, settings)  # the DICOM listener, when ICH_DICOM_PORT is set
        app.state.dicom_gateway = gateway
        heartbeat = asyncio.create_task(service.jobs.heartbeat_loop())
        try:
            yield
        finally:
            if gateway is not None:
                gateway.stop()
            await loader
            await service.jobs.drain(settings.shutdown_grace_s)
            heartbeat.cancel()
            service.close()
            log.info("service stopped")

    docs = settings.docs_enabled
    app = FastAPI(
        title="ICH expansion service",
        version="0.1.0",
        description="Early haematoma expansion and haematoma volume from a baseline non-contrast head CT "
        "(research use only).",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.auth = auth
    install_problem_handlers(app)
    include_routes(app)

    @app.middleware("http")
    async def request_context(request: Request, call_next):  # type: ignore[no-untyped-def]
        rid = request.headers.get("x-request-id", "")
        if not (0 < len(rid) <= 64 and rid.replace("-", "").isalnum()):
            rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        request.state.request_id = rid
        t0 = time.perf_counter()
        status = 500
        try:
            try:
                response: Response = await call_next(request)
            except Exception as exc:  # noqa: BLE001 - the last line of defence: answer, never re-raise
                response = unexpected_error_response(request, exc, metrics)
            status = response.status_code
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - t0
            metrics.requests.labels(template, request.method, str(status)).inc()
            metrics.request_latency.labels(template).observe(elapsed)
            if not template.startswith(("/health", "/v2/health", "/metrics")):
                log.info("request", extra={"method": request.method, "route": template, "status": status,
                                           "duration_ms": round(elapsed * 1000, 1)})
            request_id_var.reset(token)

    return app


def unexpected_error_response(request: Request, exc: BaseException, metrics: ServiceMetrics) -> Response:
    """A clean 500 problem+json for an exception no handler claimed, logged and counted.

    The log carries the exception type and the code locations (file, line, function) of the traceback but not
    the exception message nor source lines: a library's message may quote element values of client DICOM."""
    route = request.scope.get("route")
    metrics.unhandled.labels(getattr(route, "path", "unmatched"), type(exc).__name__).inc()
    frames = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)][-8:]
    log.error("unhandled error", extra={"error_type": type(exc).__name__, "frames": frames})
    return problem_response(request, status=500, code="internal_error", title="Internal error",
                            detail="An unexpected error occurred; it has been logged.")
