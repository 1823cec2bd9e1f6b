"""FastAPI dependencies of the routes, as ``Annotated`` aliases (one place; the routes only name them).

* :data:`ServiceDep`: the application's :class:`~app.api.service.PredictionService` (``app.state.service``);
* :data:`MetricsDep`: its :class:`~app.api.metrics.ServiceMetrics` (``app.state.metrics``);
* :func:`require_api_key`: the optional API-key check of ``/v1`` (``app.state.auth``, an
  :class:`~app.api.security.ApiKeyAuth`; a no-op when no keys are configured).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.metrics import ServiceMetrics
from app.api.service import PredictionService

__all__ = ["MetricsDep", "ServiceDep", "get_metrics", "get_service", "require_api_key"]


def get_service(request: Request) -> PredictionService:
    return request.app.state.service


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def require_api_key(request: Request) -> None:
    """401 ``unauthorized`` unless the request carries a configured key (``Authorization: Bearer <key>``)."""
    await request.app.state.auth(request)


ServiceDep = Annotated[PredictionService, Depends(get_service)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
