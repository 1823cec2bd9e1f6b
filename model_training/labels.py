"""Haematoma expansion label, shared by synthetic and real cohorts.

The paper's main text defines early haematoma expansion as an increase of > 6 mL absolute or > 33 % relative
volume between the baseline and the 24-hour follow-up CT; its supplement writes ">= 6 mL or >= 33 %".
``inclusive`` switches between the two readings (default: the main text's strict inequalities).
"""

from __future__ import annotations

import math


def expansion_label(
    baseline_ml: float, followup_ml: float, *, abs_ml: float = 6.0, rel: float = 0.33, inclusive: bool = False
) -> bool:
    """True when the haematoma expanded: growth > ``abs_ml`` mL or > ``rel`` x baseline (>= when ``inclusive``).

    Volumes in mL. ``baseline_ml`` must be positive and finite; ``followup_ml`` finite and >= 0.
    """
    for name, value in (("baseline_ml", baseline_ml), ("followup_ml", followup_ml)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if baseline_ml <= 0:
        raise ValueError(f"baseline_ml must be > 0, got {baseline_ml!r}")
    if followup_ml < 0:
        raise ValueError(f"followup_ml must be >= 0, got {followup_ml!r}")
    growth = followup_ml - baseline_ml
    return _exceeds(growth, abs_ml, inclusive) or _exceeds(growth, rel * baseline_ml, inclusive)


def _exceeds(value: float, threshold: float, inclusive: bool) -> bool:
    """``value > threshold`` (``>=`` when inclusive); values within 1e-9 of the threshold count as equal, so
    that floating-point rounding (13.3 - 10.0 = 3.3000000000000007) cannot flip a boundary case."""
    if math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-9):
        return inclusive
    return value > threshold
