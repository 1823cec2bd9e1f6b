"""``POST /v1/comparisons``: haematoma growth between two stored predictions (thin: the work is in
:mod:`app.comparison`). The predictions' :class:`~app.comparison.ScanSubject` entries are read by id from the
service's subject store (``service.subjects``, the result store's kind), so any store backend that keeps JSON-able
values serves them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.deps import ServiceDep, require_api_key
from app.api.problems import Problem
from app.comparison import ComparisonResponse, ExpansionRule, ScanSubject, compare, subject_store_key
from app.errors import ComparisonError

__all__ = ["ComparisonRequest", "build_comparison_router"]


class ComparisonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline: str = Field(min_length=1, max_length=64, description="Prediction id of the baseline CT")
    followup: str = Field(min_length=1, max_length=64, description="Prediction id of the follow-up CT")
    inclusive: bool = Field(False, description="Use >= (the paper's supplement) instead of > (its main text)")


def _subject(value: Any) -> ScanSubject | None:
    if isinstance(value, ScanSubject):
        return value
    try:
        if isinstance(value, str | bytes):
            return ScanSubject.model_validate_json(value)
        if isinstance(value, dict):
            return ScanSubject.model_validate(value)
    except ValidationError:
        return None
    return None


def build_comparison_router() -> APIRouter:
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @v1.post("/comparisons", response_model=ComparisonResponse, responses={404: {}, 422: {}})
    async def create_comparison(body: ComparisonRequest, service: ServiceDep) -> ComparisonResponse:
        """Growth between the baseline and follow-up predictions of one patient: both volumes, `growth_ml`,
        `growth_percent` and `expansion` by the paper's rule (> 6 mL or > 33 %; `inclusive`: >=). Refused (422)
        for two different patients, a follow-up not acquired after the baseline, or a study without patient
        identity or acquisition date (e.g. a NIfTI volume)."""
        subjects: list[ScanSubject] = []
        for role, pid in (("baseline", body.baseline), ("follow-up", body.followup)):
            entry = service.subjects.get(subject_store_key(pid)) if "/" not in pid else None
            subject = _subject(entry.result) if entry is not None else None
            if subject is None:
                raise Problem("not_found", f"No such {role} prediction (unknown or expired)")
            subjects.append(subject)
        try:
            return compare(subjects[0], subjects[1], ExpansionRule(inclusive=body.inclusive))
        except ComparisonError as exc:
            raise Problem(str(exc.code), exc.message, status=422) from None

    return v1
