"""Haematoma growth between a baseline and a follow-up prediction of the same patient.

The expansion rule is the paper's (Zhong et al. 2021, main text): growth of more than 6 mL absolute or more than
33 % of the baseline volume; its supplement writes ">= 6 mL or >= 33 %" (:class:`ExpansionRule` ``inclusive``).
This module is the one implementation of that rule: the training package's labels
(:func:`model_training.labels.expansion_label`) call :func:`expanded`.

What a comparison needs from each prediction is a :class:`ScanSubject`, built by :func:`subject_of` from the
ingested series and the prediction: the haematoma volume (mL, analysis grid), a keyed hash of the patient identity
and the acquisition date/time. The subject is kept server-side with the prediction (never returned, never logged):
the hash is an HMAC-SHA256 of the normalised identity, so stored subjects do not hold the identifier itself, and
the comparison document reports the delay between the scans in hours, not dates.

Refusals (:class:`~app.errors.ComparisonRefusal`): two different patients, a follow-up acquired at or before the
baseline, and a study without patient identity or acquisition date (e.g. a NIfTI volume), where neither could be
checked.

This module is part of the core: it never imports :mod:`app.api`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.errors import ComparisonError, ComparisonRefusal, ResultReason

#: the process's key when no deployment key is configured (comparisons then work within one process)
PROCESS_IDENTITY_KEY = os.urandom(32)
SUBJECT_KEY_PREFIX = "subject/"  # store key of a prediction's subject; "/" never occurs in a prediction id


def subject_store_key(prediction_id: str) -> str:
    """The result-store key under which a prediction's :class:`ScanSubject` is kept."""
    return f"{SUBJECT_KEY_PREFIX}{prediction_id}"


class ExpansionRule(BaseModel):
    """Expansion = growth > ``abs_ml`` mL or > ``rel`` x baseline (``>=`` for both when ``inclusive``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    abs_ml: float = Field(6.0, gt=0, description="absolute growth threshold, mL")
    rel: float = Field(0.33, gt=0, description="relative growth threshold, fraction of the baseline volume")
    inclusive: bool = Field(False, description="false: > (the paper's main text); true: >= (its supplement)")

    @property
    def definition(self) -> str:
        op = ">=" if self.inclusive else ">"
        return (f"Haematoma growth from the baseline to the follow-up CT of {op} {self.abs_ml:g} mL absolute or "
                f"{op} {self.rel * 100:g} % relative to the baseline volume")


def _exceeds(value: float, threshold: float, inclusive: bool) -> bool:
    """``value > threshold`` (``>=`` when inclusive); values within 1e-9 of the threshold count as equal, so
    floating-point rounding (13.3 - 10.0 = 3.3000000000000007) cannot flip a boundary case."""
    if math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-9):
        return inclusive
    return value > threshold


def expanded(baseline_ml: float, followup_ml: float, rule: ExpansionRule | None = None) -> bool:
    """True when the haematoma expanded by ``rule`` (default: the paper's strict rule). Volumes in mL;
    ``baseline_ml`` must be positive and finite, ``followup_ml`` finite and >= 0 (``ValueError`` otherwise)."""
    rule = rule or ExpansionRule()
    for name, value in (("baseline_ml", baseline_ml), ("followup_ml", followup_ml)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if baseline_ml <= 0:
        raise ValueError(f"baseline_ml must be > 0, got {baseline_ml!r}")
    if followup_ml < 0:
        raise ValueError(f"followup_ml must be >= 0, got {followup_ml!r}")
    growth = followup_ml - baseline_ml
    return _exceeds(growth, rule.abs_ml, rule.inclusive) or _exceeds(growth, rule.rel * baseline_ml, rule.inclusive)


# --- what a comparison needs from one prediction -------------------------------------------------------------
class ScanSubject(BaseModel):
    """One prediction as a comparison sees it. Holds no identifier in clear: ``patient_key`` is a keyed hash."""

    model_config = ConfigDict(frozen=True)

    prediction_id: str
    study_instance_uid: str
    series_instance_uid: str
    patient_key: str | None = Field(description="HMAC-SHA256 of the normalised patient identity; None: unknown")
    acquired_at: dt.datetime | None = Field(description="Acquisition date/time of the series; None: unknown")
    detected: bool
    volume_ml: float
    volume_interval_ml: tuple[float, float] | None = None


def _text(header: Any, keyword: str) -> str:
    try:
        value = header.get(keyword)
    except Exception:  # noqa: BLE001 - a damaged element counts as absent
        return ""
    if value is None:
        return ""
    value = getattr(value, "value", value)
    return " ".join(str(value).replace("^", " ").split()).upper()


def patient_key(header: Any, secret: bytes | None = None) -> str | None:
    """Keyed hash (hex) of a DICOM header's patient identity: PatientID with IssuerOfPatientID, else PatientName
    with PatientBirthDate; None when the header names no patient. ``secret``: the deployment's key (default: this
    process's random key)."""
    pid = _text(header, "PatientID")
    parts = ["id", pid, _text(header, "IssuerOfPatientID")] if pid else \
        ["name", _text(header, "PatientName"), _text(header, "PatientBirthDate")]
    if not parts[1]:
        return None
    return hmac.new(secret or PROCESS_IDENTITY_KEY, "\x1f".join(parts).encode("utf-8"), hashlib.sha256).hexdigest()


def _date(value: str) -> dt.date | None:
    digits = value.replace("-", "").replace(".", "").strip()
    try:
        return dt.datetime.strptime(digits[:8], "%Y%m%d").date() if len(digits) >= 8 else None
    except ValueError:
        return None


def _time(value: str) -> dt.time:
    digits = value.replace(":", "").strip()
    whole, _, frac = digits.partition(".")
    whole = (whole + "0000")[:6] if whole else "000000"
    try:
        t = dt.datetime.strptime(whole, "%H%M%S").time()
    except ValueError:
        return dt.time(0, 0)
    micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
    return t.replace(microsecond=micro)


def acquisition_datetime(header: Any) -> dt.datetime | None:
    """The series' acquisition date/time (naive, as written): AcquisitionDateTime, else the first of
    Acquisition, Series, Content and Study date (with its time, midnight when absent); None without any date."""
    stamp = _text(header, "AcquisitionDateTime")
    day = _date(stamp)
    if day is not None:
        return dt.datetime.combine(day, _time(stamp[8:].split("+")[0].split("-")[0]))
    for prefix in ("Acquisition", "Series", "Content", "Study"):
        day = _date(_text(header, f"{prefix}Date"))
        if day is not None:
            return dt.datetime.combine(day, _time(_text(header, f"{prefix}Time")))
    return None


def subject_of(prediction_id: str, series: Any, result: Any, secret: bytes | None = None) -> ScanSubject:
    """The :class:`ScanSubject` of a prediction: ``series`` an :class:`~app.ingestion.types.IngestedSeries`,
    ``result`` its :class:`~app.inference.PredictionResult`. Identity and time come from the first source header
    (none for a NIfTI volume)."""
    header = series.source_headers[0] if getattr(series, "source_headers", None) else None
    interval = getattr(result, "volume_interval_ml", None)
    return ScanSubject(
        prediction_id=prediction_id,
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        patient_key=patient_key(header, secret) if header is not None else None,
        acquired_at=acquisition_datetime(header) if header is not None else None,
        detected=bool(result.detected),
        volume_ml=float(result.volume_ml),
        volume_interval_ml=None if interval is None else (float(interval[0]), float(interval[1])),
    )


# --- the comparison document ---------------------------------------------------------------------------------
class ComparedScan(BaseModel):
    prediction_id: str
    study_instance_uid: str
    series_instance_uid: str
    haematoma_detected: bool
    volume_ml: float = Field(description="Haematoma volume on the analysis grid, mL")
    volume_interval_ml: tuple[float, float] | None = Field(
        None, description="Test-time-augmentation interval of the volume, mL (when the predictor ran it)")


class GrowthExpansion(BaseModel):
    value: bool | None = Field(description="The expansion rule applied to the two volumes; null: see reason")
    reason: str | None = Field(None, description="Why value is null: no_baseline_haematoma")
    abs_ml: float
    rel: float
    inclusive: bool
    definition: str


class ComparisonResponse(BaseModel):
    """``POST /v1/comparisons`` and ``python -m app compare``. No patient identifier and no date."""

    baseline: ComparedScan
    followup: ComparedScan
    interval_hours: float | None = Field(description="Follow-up acquisition time minus the baseline's, hours "
                                         "(null only for a pairing vouched for by a cohort manifest)")
    growth_ml: float = Field(description="Follow-up volume minus baseline volume, mL")
    growth_percent: float | None = Field(description="growth_ml / baseline volume x 100; null without a baseline "
                                         "haematoma")
    growth_interval_ml: tuple[float, float] | None = Field(
        None, description="Conservative interval of growth_ml from the two volume intervals, mL")
    expansion: GrowthExpansion


def _scan(s: ScanSubject) -> ComparedScan:
    return ComparedScan(prediction_id=s.prediction_id, study_instance_uid=s.study_instance_uid,
                        series_instance_uid=s.series_instance_uid, haematoma_detected=s.detected,
                        volume_ml=round(s.volume_ml, 4), volume_interval_ml=s.volume_interval_ml)


def check_pair(baseline: ScanSubject, followup: ScanSubject, *, require_known: bool = True) -> None:
    """Raise :class:`~app.errors.ComparisonError` unless both studies name the same patient and the follow-up
    was acquired after the baseline. The messages name neither the patients nor the dates. Without
    ``require_known`` an identity or a time missing from either study skips that check instead of refusing."""
    for role, s in (("baseline", baseline), ("follow-up", followup)) if require_known else ():
        if s.patient_key is None:
            raise ComparisonError(ComparisonRefusal.PATIENT_IDENTITY_UNKNOWN,
                                  f"The {role} study names no patient (no PatientID or PatientName), so it cannot "
                                  "be checked to be the same patient; compare DICOM studies")
        if s.acquired_at is None:
            raise ComparisonError(ComparisonRefusal.ACQUISITION_TIME_UNKNOWN,
                                  f"The {role} study has no acquisition, series or study date, so the order of the "
                                  "scans cannot be checked")
    if baseline.patient_key is not None and followup.patient_key is not None and \
            not hmac.compare_digest(baseline.patient_key, followup.patient_key):
        raise ComparisonError(ComparisonRefusal.DIFFERENT_PATIENTS,
                              "The baseline and follow-up studies belong to different patients")
    if baseline.acquired_at is not None and followup.acquired_at is not None and \
            followup.acquired_at <= baseline.acquired_at:
        raise ComparisonError(ComparisonRefusal.FOLLOWUP_NOT_LATER,
                              "The follow-up study was acquired at or before the baseline study; send the earlier "
                              "study as the baseline")


def compare(baseline: ScanSubject, followup: ScanSubject, rule: ExpansionRule | None = None, *,
            paired_by_caller: bool = False) -> ComparisonResponse:
    """Growth and expansion between two predictions (after :func:`check_pair`). Volumes mL, delay hours.
    ``paired_by_caller``: the caller vouches for the pairing (a cohort manifest row), so studies without identity
    or date are accepted (``interval_hours`` is then null); contradicting identities or order are still refused."""
    rule = rule or ExpansionRule()
    check_pair(baseline, followup, require_known=not paired_by_caller)
    hours = None
    if baseline.acquired_at is not None and followup.acquired_at is not None:
        hours = (followup.acquired_at - baseline.acquired_at).total_seconds() / 3600.0
    growth = followup.volume_ml - baseline.volume_ml
    has_baseline = baseline.detected and baseline.volume_ml > 0
    value = expanded(baseline.volume_ml, followup.volume_ml, rule) if has_baseline else None
    growth_interval = None
    if baseline.volume_interval_ml is not None and followup.volume_interval_ml is not None:
        growth_interval = (round(followup.volume_interval_ml[0] - baseline.volume_interval_ml[1], 4),
                           round(followup.volume_interval_ml[1] - baseline.volume_interval_ml[0], 4))
    return ComparisonResponse(
        baseline=_scan(baseline),
        followup=_scan(followup),
        interval_hours=None if hours is None else round(hours, 4),
        growth_ml=round(growth, 4),
        growth_percent=round(100.0 * growth / baseline.volume_ml, 3) if has_baseline else None,
        growth_interval_ml=growth_interval,
        expansion=GrowthExpansion(
            value=value, reason=None if has_baseline else str(ResultReason.NO_BASELINE_HAEMATOMA),
            abs_ml=rule.abs_ml, rel=rule.rel, inclusive=rule.inclusive, definition=rule.definition,
        ),
    )
