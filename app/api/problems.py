"""RFC 9457 problem details (``application/problem+json``) for every error answer.

Each body has ``type``, ``title``, ``status``, ``detail`` and a stable machine-readable ``code`` (the
ingestion :class:`~app.errors.RefusalCode` values, or a service code listed in :data:`SERVICE_CODES`).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import IngestionError, RefusalCode

log = logging.getLogger("app.api")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://github.com/ich-expansion/ich-expansion/blob/main/README.md#error-codes"

# HTTP status of each ingestion refusal: 415 for content we cannot read as a CT image, 413 over limits,
# 400 for malformed requests, 422 for well-formed DICOM that cannot be analysed.
REFUSAL_STATUS: dict[RefusalCode, int] = {
    RefusalCode.NOT_DICOM: 415,
    RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX: 415,
    RefusalCode.EMPTY_INPUT: 400,
    RefusalCode.ARCHIVE_INVALID: 400,
    RefusalCode.ARCHIVE_LIMIT_EXCEEDED: 413,
    RefusalCode.NO_IMAGE_SERIES: 422,
    RefusalCode.NOT_CT: 422,
    RefusalCode.AMBIGUOUS_SERIES: 422,
    RefusalCode.SERIES_NOT_FOUND: 422,
    RefusalCode.TOO_FEW_SLICES: 422,
    RefusalCode.MISSING_SLICES: 422,
    RefusalCode.CONFLICTING_DUPLICATES: 422,
    RefusalCode.CORRUPT_PIXEL_DATA: 422,
    RefusalCode.NOT_AXIAL: 422,
    RefusalCode.INCONSISTENT_GEOMETRY: 422,
    RefusalCode.BRAIN_NOT_FOUND: 422,
    RefusalCode.UNSUPPORTED_SOP_CLASS: 422,
    RefusalCode.INVALID_DICOM: 422,
    RefusalCode.INVALID_NIFTI: 422,
    RefusalCode.UNSUPPORTED_VOLUME: 422,
    RefusalCode.NOT_HOUNSFIELD_UNITS: 422,
    RefusalCode.MULTIPLE_VOLUMES: 422,
}

SERVICE_CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "The request is malformed"),
    "unsupported_media_type": (415, "Unsupported request content type"),
    "body_too_large": (413, "Request body too large"),
    "too_many_files": (413, "Too many files in the request"),
    "validation_error": (422, "Invalid request parameters"),
    "unauthorized": (401, "Missing or invalid API key"),
    "not_found": (404, "Not found"),
    "seg_needs_dicom_source": (409, "This output needs DICOM source images"),
    "slices_unavailable": (409, "This result has no stored image volume"),
    "method_not_allowed": (405, "Method not allowed"),
    "request_timeout": (408, "The upload was not completed in time"),
    "overloaded": (503, "The service is at capacity; retry later"),
    "not_ready": (503, "The model is not loaded yet"),
    "processing_timeout": (503, "The request exceeded the processing time limit"),
    "out_of_memory": (503, "The device ran out of memory for this request"),
    "store_unavailable": (503, "The result store is unavailable; retry later"),
    "job_lost": (503, "The replica running this prediction stopped"),
    "upstream_unavailable": (503, "No replica could answer; retry later"),  # the balancer's (deploy/haproxy)
    "internal_error": (500, "Internal error"),
}


class Problem(Exception):
    """Raise anywhere in a request to answer with problem+json."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(detail)
        default_status, title = SERVICE_CODES.get(code, (400, HTTPStatus(status or 400).phrase))
        self.code = code
        self.status = status or default_status
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}

    @classmethod
    def from_ingestion(cls, exc: IngestionError) -> Problem:
        status = REFUSAL_STATUS.get(exc.code, 422)
        return cls(str(exc.code), exc.message, status=status, extra={"details": exc.details})


def problem_response(
    request: Request | None,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"{TYPE_BASE}-{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            body["request_id"] = request_id
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _from_problem(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(
        request, status=exc.status, code=exc.code, title=exc.title, detail=exc.detail,
        headers=exc.headers, extra=exc.extra,
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error through problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return _from_problem(request, exc)

    @app.exception_handler(IngestionError)
    async def _ingestion(request: Request, exc: IngestionError) -> JSONResponse:
        return _from_problem(request, Problem.from_ingestion(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return _from_problem(request, Problem("validation_error", "Invalid request parameters",
                                              extra={"errors": errors}))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        code = code or ("invalid_request" if exc.status_code < 500 else "internal_error")
        title = HTTPStatus(exc.status_code).phrase
        return problem_response(request, status=exc.status_code, code=code, title=title,
                                detail=str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only reached for an error outside the request_context middleware (which answers the others itself);
        # Starlette re-raises after this answer. The message is not logged: it may quote client DICOM values.
        log.error("unhandled error outside the request context", extra={"error_type": type(exc).__name__})
        return problem_response(request, status=500, code="internal_error", title="Internal error",
                                detail="An unexpected error occurred; it has been logged.")
