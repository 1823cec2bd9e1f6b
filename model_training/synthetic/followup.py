"""The 20-24 h follow-up scan of a synthetic case: the same head (anatomy, mimics, haematoma shape and markers,
the same draws as the baseline), in a new position, with the haematoma grown or stable to the growth model's
follow-up volume, and the noise of a new acquisition.

* Position: the head is moved rigidly, by a translation of up to 4 mm in-plane and 6 mm along z (LPS) and a
  rotation of up to 4 degrees yaw and pitch and 3 degrees roll, as a patient repositioned on the table.
  The translation is reduced when the moved head would leave the reconstruction field of view.
* Delay: the follow-up is acquired 20-24 h after the baseline (uniform), so its DICOM acquisition date/time
  is later than the baseline's.
* Volume: the haematoma is rendered at the follow-up volume ``SyntheticCase.followup_volume_ml`` of the baseline
  (drawn by :mod:`.growth`). The renderer's voxel mask reaches a requested volume within a few per cent, so the
  request is corrected by secant steps until the follow-up mask's volume is within ``VOLUME_TOLERANCE`` of the
  target (0.5 %, or two voxels for small haematomas).
* Identity: the DICOM writer keeps the patient name and ID of the case and derives new Study/Series/SOP UIDs
  (``case.scan == "followup"``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from model_training.synthetic.anatomy import HeadParams, HeadPhantom
from model_training.synthetic.case import FollowupPlan, SyntheticCase, generate_case, render_case
from model_training.synthetic.geometry import Grid
from model_training.synthetic.haematoma import HaematomaResult, render_haematoma

TRANSLATION_MM = (4.0, 4.0, 6.0)  # maximum |shift| along x, y, z (LPS mm)
ROTATION_DEG = (4.0, 4.0, 3.0)  # maximum |change| of yaw, pitch, roll (degrees)
DELAY_HOURS = (20.0, 24.0)
VOLUME_TOLERANCE = 0.005  # relative; at least two voxels
MAX_VOLUME_STEPS = 5


def place_followup_head(rng: np.random.Generator, head: HeadParams, fov_mm: float) -> tuple[HeadParams, float]:
    """The head moved for the follow-up scan and the delay (hours) after the baseline; see the module docstring."""
    shift = rng.uniform(-1.0, 1.0, 3) * np.asarray(TRANSLATION_MM)
    turn = rng.uniform(-1.0, 1.0, 3) * np.asarray(ROTATION_DEG)
    hours = float(rng.uniform(*DELAY_HOURS))
    moved = dataclasses.replace(head, yaw_deg=head.yaw_deg + float(turn[0]), pitch_deg=head.pitch_deg + float(turn[1]),
                                roll_deg=head.roll_deg + float(turn[2]))
    hx, hy = moved.half_extent_xy
    for factor in (1.0, 0.5, 0.0):  # the moved head must stay inside the field of view (4 mm margin)
        cx, cy = head.centre[0] + factor * shift[0], head.centre[1] + factor * shift[1]
        if 2.0 * max(hx + abs(cx), hy + abs(cy)) + 8.0 <= fov_mm:
            break
    centre = (float(cx), float(cy), float(head.centre[2] + shift[2]))
    return dataclasses.replace(moved, centre=centre), hours


def _volume_matched_renderer(voxel_tolerance: int = 2):
    """A ``render_haematoma`` that corrects the requested volume until the mask volume meets the target."""

    def render(rng: np.random.Generator, grid: Grid, head: HeadParams, phantom: HeadPhantom, target_ml: float,
               markers: dict[str, int], location: str | None) -> HaematomaResult:
        voxel_ml = float(np.prod(grid.spacing_zyx)) / 1000.0
        tolerance = max(VOLUME_TOLERANCE * target_ml, voxel_tolerance * voxel_ml)
        state = rng.bit_generator.state
        hu0 = phantom.hu.copy()
        request = target_ml
        best: tuple[float, HaematomaResult, np.ndarray] | None = None
        for _ in range(MAX_VOLUME_STEPS):
            rng.bit_generator.state = state  # the same shape draws every time
            phantom.hu[...] = hu0
            result = render_haematoma(rng, grid, head, phantom, float(np.clip(request, 0.05, 200.0)), markers,
                                      location)
            got = float(result.mask.sum(dtype=np.int64)) * voxel_ml
            if best is None or abs(got - target_ml) < abs(best[0] - target_ml):
                best = (got, result, phantom.hu.copy())
            if abs(got - target_ml) <= tolerance or got <= 0:
                break
            request *= target_ml / got
        assert best is not None
        phantom.hu[...] = best[2]
        return best[1]

    return render


def generate_followup(seed: int, index: int, baseline: SyntheticCase | None = None, *,
                      ich_free_fraction: float = 0.0, ivh_only_fraction: float = 0.15,
                      **overrides: Any) -> SyntheticCase:
    """The follow-up scan of case ``index`` of cohort ``seed``, drawn with the arguments of :func:`generate_case`,
    or, when the caller already has the baseline (``baseline``), with the arguments it was drawn with (then no
    others may be given). Its ``mask`` is the follow-up haematoma (volume ``mask_volume_ml``, within 0.5 % of
    ``baseline.followup_volume_ml``); ``baseline_volume_ml``, ``followup_volume_ml`` and ``label`` are the
    baseline's."""
    if baseline is None:
        baseline = generate_case(seed, index, ich_free_fraction=ich_free_fraction,
                                 ivh_only_fraction=ivh_only_fraction, **overrides)
    elif overrides or (ich_free_fraction, ivh_only_fraction) != (0.0, 0.15):
        raise TypeError("give either the baseline case or the arguments to draw it, not both")
    if (baseline.seed, baseline.index) != (seed, index):
        raise ValueError("baseline is not case (seed, index)")
    ich_free_fraction, ivh_only_fraction, overrides = baseline.draw_args
    plan = FollowupPlan(target_volume_ml=baseline.followup_volume_ml, baseline_volume_ml=baseline.baseline_volume_ml,
                        place=place_followup_head, render_haematoma=_volume_matched_renderer())
    return render_case(seed, index, ich_free_fraction, ivh_only_fraction, dict(overrides), plan)
