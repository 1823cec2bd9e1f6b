"""The BAT score (Morotti et al., Stroke 2018; Zhong et al. 2021, Supplemental Table 3) from the NCCT markers
measured on the image and the onset-to-CT time.

Points: blend sign present 1; any hypodensity present 2; time from onset to NCCT < 2.5 h 2. Without the onset
time only the image points are scored and the score is marked incomplete (``complete`` False).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

BLEND_POINTS = 1
HYPODENSITY_POINTS = 2
EARLY_POINTS = 2
EARLY_HOURS = 2.5


@dataclass(frozen=True)
class BatScore:
    """``score`` 0-5 (0-3 without the onset time); ``points`` per item (``onset_lt_2_5h`` None when unknown)."""

    score: int
    points: dict[str, int | None]
    complete: bool


def bat_score(markers: Mapping[str, bool], onset_to_ct_hours: float | None) -> BatScore:
    """The BAT score from marker decisions (``blend``, ``hypodensity``) and the onset-to-CT time (hours)."""
    points: dict[str, int | None] = {
        "blend": BLEND_POINTS if markers.get("blend") else 0,
        "hypodensity": HYPODENSITY_POINTS if markers.get("hypodensity") else 0,
        "onset_lt_2_5h": None if onset_to_ct_hours is None else
        (EARLY_POINTS if float(onset_to_ct_hours) < EARLY_HOURS else 0),
    }
    return BatScore(score=sum(v for v in points.values() if v), points=points,
                    complete=onset_to_ct_hours is not None)
