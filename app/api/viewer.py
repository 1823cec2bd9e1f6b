"""The web page (``/ui/``) and the slice viewer's routes (thin; the slices are drawn in :mod:`app.outputs.slices`
through :meth:`app.outputs.CompactResult.render_slice`).

* ``GET /ui/``: static HTML, CSS and JavaScript from :mod:`app.ui` (package data), served with a
  Content-Security-Policy that lets the page reach its own origin only (no CDN, no external font, no frame);
  ``GET /`` redirects there. The page holds no data: it calls ``/v1`` with the API key typed into it.
* ``GET /v1/predictions/{id}/slices``: the slice index (count, LPS z positions in mm, orientation letters, mask
  pixels per slice, key slices, windows); ``GET /v1/predictions/{id}/slices/{k}.png?window=brain|blood|bone``:
  axial slice ``k`` (0-based, ascending z) of the analysed volume with the haematoma outline. Both behind the API
  key like the rest of ``/v1``; 404 ``not_found`` for an unknown prediction or slice, 409 ``slices_unavailable``
  for a result stored without its volume, 422 ``validation_error`` for an unknown window.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from app.api.deps import ServiceDep, require_api_key
from app.api.problems import Problem
from app.api.service import PredictionService
from app.outputs import CompactResult
from app.outputs.compact import SLICES_UNAVAILABLE, SLICES_UNAVAILABLE_REASON, OutputUnavailable
from app.ui import STATIC_DIR

#: the page may load and call its own origin only; images may also come from blob: URLs (slices fetched with the key)
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
UI_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
SLICE_CACHE_CONTROL = "private, max-age=3600"  # a stored result never changes

Window = Literal["brain", "blood", "bone"]


class UiStaticFiles(StaticFiles):
    """The page's files with :data:`UI_HEADERS` on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(UI_HEADERS)
        return response


def _compact(service: PredictionService, prediction_id: str) -> CompactResult:
    entry = service.store.get(prediction_id)
    if entry is None:
        raise Problem("not_found", "No such prediction (unknown or expired)")
    compact = entry.compact
    if not isinstance(compact, CompactResult) or compact.slices is None:
        raise Problem(SLICES_UNAVAILABLE, SLICES_UNAVAILABLE_REASON)
    return compact


async def _in_pool(service: PredictionService, fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(service.cpu_pool, fn, *args)


def build_viewer_router() -> APIRouter:
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @v1.get("/predictions/{prediction_id}/slices", responses={404: {}, 409: {}})
    async def get_slice_index(prediction_id: str, service: ServiceDep) -> JSONResponse:
        """The axial slices of the analysed series: ``count``, ``positions_mm`` (LPS z of each slice centre),
        ``orientation`` (patient direction at each image edge), ``spacing_mm`` (z, y, x), ``rows``/``columns`` of
        the slice PNGs, ``mask_pixels`` per slice, the overview's ``key_slices``, ``windows`` (HU) and the
        ``url_template`` of a slice image."""
        compact = _compact(service, prediction_id)
        try:
            index = await _in_pool(service, compact.slice_index)
        except OutputUnavailable as exc:
            raise Problem(exc.code, exc.reason) from None
        index["url_template"] = f"/v1/predictions/{prediction_id}/slices/{{k}}.png?window={{window}}"
        return JSONResponse(index, headers={"Cache-Control": SLICE_CACHE_CONTROL})

    @v1.get("/predictions/{prediction_id}/slices/{k}.png", responses={404: {}, 409: {}, 422: {}},
            response_class=Response)
    async def get_slice_png(prediction_id: str, k: int, service: ServiceDep,
                            window: Annotated[Window, Query(description="Display window")] = "brain") -> Response:
        """Axial slice ``k`` (0-based, ascending z: inferior to superior on an LPS grid) as PNG, in the brain
        (0-80 HU), blood (-20-180 HU) or bone (-500-1500 HU) window, haematoma outlined in red; row 0 at the
        top, column 0 at the left (see the index's ``orientation``)."""
        compact = _compact(service, prediction_id)
        depth = compact.shape_zyx[0]
        if not 0 <= k < depth:
            raise Problem("not_found", f"No slice {k}: this series has {depth} slices (0 to {depth - 1})")
        t0 = time.perf_counter()
        data = await _in_pool(service, compact.render_slice, k, window)
        service.metrics.stage_latency.labels("render_slice").observe(time.perf_counter() - t0)
        return Response(data, media_type="image/png", headers={"Cache-Control": SLICE_CACHE_CONTROL})

    return v1


def install_ui(app: FastAPI) -> None:
    """Mount the page at ``/ui`` (``/ui/`` serves ``index.html``), redirect ``/`` there, and add the viewer's
    ``/v1`` routes."""
    app.include_router(build_viewer_router())
    app.mount("/ui", UiStaticFiles(directory=STATIC_DIR, html=True), name="ui")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)
