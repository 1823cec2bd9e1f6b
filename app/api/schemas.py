"""Response models of the HTTP API (pydantic). No field carries a patient name, ID or birth date.

The prediction document is defined in the core (:mod:`app.result_schema`, built by :mod:`app.result`) and
re-exported here; only the health answer is specific to the web layer.
"""

from __future__ import annotations

from pydantic import BaseModel

from app.result_schema import (
    Expansion,
    Haematoma,
    InputSummary,
    Links,
    ModelRef,
    PredictionResponse,
    WarningItem,
)

__all__ = [
    "Expansion",
    "Haematoma",
    "HealthResponse",
    "InputSummary",
    "Links",
    "ModelRef",
    "PredictionResponse",
    "WarningItem",
]


class HealthResponse(BaseModel):
    status: str
    detail: str | None = None
