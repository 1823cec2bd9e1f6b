"""NCCT markers measured on the image (app/model/ncct_markers.py) and the BAT score (app/model/bat_score.py), on
analytic clots with and without each marker: blurred, noisy, 0.5 x 0.5 x 5 mm voxels like a head CT."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from app.model.bat_score import bat_score
from app.model.ncct_markers import (
    DEFAULT_THRESHOLDS,
    MEASUREMENT_OF,
    NCCT_MARKERS,
    MarkerRules,
    measure_markers,
)

SPACING = (5.0, 0.5, 0.5)
SHAPE = (9, 120, 120)
CLOT_HU, BRAIN_HU = 72.0, 32.0


def _coords():
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)), indexing="ij")
    return z - 20.0, y - 30.0, x - 30.0


def _ball(r: float, c=(0.0, 0.0, 0.0)) -> np.ndarray:
    z, y, x = _coords()
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r


def _render(density: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = ndimage.gaussian_filter(density.astype(np.float32), (0.0, 1.0, 1.0))
    return hu + rng.normal(0.0, 3.0, hu.shape).astype(np.float32)


def _clot(radius: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    mask = _ball(radius)
    return mask, np.where(mask, CLOT_HU, BRAIN_HU).astype(np.float32)


def _measure(density: np.ndarray, mask: np.ndarray, probability: np.ndarray | None = None, seed: int = 1):
    return measure_markers(_render(density, seed), mask, SPACING, probability)


def test_a_homogeneous_round_clot_has_no_marker() -> None:
    mask, density = _clot()
    decided = MarkerRules(enabled=True).decide(_measure(density, mask))
    assert decided == {name: False for name in NCCT_MARKERS}


def test_an_encapsulated_hypodensity_and_a_black_hole() -> None:
    mask, density = _clot()
    mild, dark = density.copy(), density.copy()
    focus = _ball(6.0)
    mild[focus] -= 18.0
    dark[focus] -= 42.0
    plain = _measure(density, mask)["darkness_max_hu"]
    m_mild = _measure(mild, mask)["darkness_max_hu"]
    m_dark = _measure(dark, mask)["darkness_max_hu"]
    assert plain < DEFAULT_THRESHOLDS["hypodensity"] <= m_mild
    assert m_dark > m_mild + 10.0
    # a dark region that opens onto the clot's surface is not encapsulated: it does not count as hypodense
    edge = density.copy()
    edge[_ball(6.0, (0.0, 0.0, 15.0)) & mask] -= 18.0
    assert _measure(edge, mask)["darkness_max_hu"] < m_mild


def test_distinct_hypodense_foci_are_counted() -> None:
    mask, density = _clot()
    several = density.copy()
    for c in ((0.0, -7.0, -7.0), (0.0, 7.0, -7.0), (0.0, -7.0, 7.0), (0.0, 7.0, 7.0)):
        several[_ball(3.0, c)] -= 20.0
    one = density.copy()
    one[_ball(3.0)] -= 20.0
    assert _measure(several, mask)["dark_foci"] >= DEFAULT_THRESHOLDS["heterogeneous_density"]
    assert _measure(one, mask)["dark_foci"] == 1


def test_blend_sign_is_a_straight_margin_between_two_densities() -> None:
    mask, density = _clot()
    _, _, x = _coords()
    blend = np.where(mask & (x > 2.0), CLOT_HU + 6.0, np.where(mask, CLOT_HU - 22.0, BRAIN_HU)).astype(np.float32)
    value = _measure(blend, mask)["blend_contrast_hu"]
    assert 22.0 <= value <= 34.0
    assert _measure(density, mask)["blend_contrast_hu"] < DEFAULT_THRESHOLDS["blend"] / 2


def test_fluid_level_is_a_horizontal_line_with_the_hypodense_part_in_front() -> None:
    whole = _ball(15.0)
    _, y, _ = _coords()
    dense = whole & (y > -2.0)  # posterior (dependent) part; +y is posterior in LPS
    density = np.where(dense, 80.0, np.where(whole, 18.0, BRAIN_HU)).astype(np.float32)
    probability = whole.astype(np.float32) * 0.45 + dense * 0.5  # the network half-believes the fluid part
    value = _measure(density, dense, probability)["fluid_level_score"]
    assert value >= DEFAULT_THRESHOLDS["fluid_level"]
    upside_down = np.where(whole & (y < 2.0), 80.0, np.where(whole, 18.0, BRAIN_HU)).astype(np.float32)
    flipped = whole & (y < 2.0)
    assert _measure(upside_down, flipped, whole * 0.45 + flipped * 0.5)["fluid_level_score"] == 0.0


def test_lobulated_margins_raise_the_irregularity() -> None:
    mask, density = _clot(13.0)
    lobed = mask.copy()
    for c in ((0.0, 13.0, 0.0), (0.0, -9.0, 9.0), (5.0, 0.0, -13.0)):
        lobed |= _ball(6.0, c)
    d_lobed = np.where(lobed, CLOT_HU, BRAIN_HU).astype(np.float32)
    assert _measure(d_lobed, lobed)["irregularity"] > _measure(density, mask)["irregularity"] + 0.08


def test_empty_mask_measures_zero_and_every_marker_has_a_measurement() -> None:
    values = measure_markers(np.zeros(SHAPE, np.float32), np.zeros(SHAPE, bool), SPACING)
    assert set(MEASUREMENT_OF.values()) <= set(values) and not any(values.values())


@pytest.mark.parametrize(("markers", "onset", "points", "complete"), [
    ({"blend": True, "hypodensity": True}, 1.0, (1, 2, 2), True),
    ({"blend": False, "hypodensity": True}, 3.0, (0, 2, 0), True),
    ({"blend": True, "hypodensity": False}, None, (1, 0, None), False),
    ({}, 2.5, (0, 0, 0), True),  # 2.5 h is not < 2.5 h
])
def test_bat_score_points(markers, onset, points, complete) -> None:
    result = bat_score(markers, onset)
    assert (result.points["blend"], result.points["hypodensity"], result.points["onset_lt_2_5h"]) == points
    assert result.score == sum(p for p in points if p) and result.complete is complete


def test_marker_report_scores_agreement_with_the_truth() -> None:
    from model_training.evaluation.marker_report import marker_section

    rng = np.random.default_rng(5)
    rows = []
    for i in range(60):
        truth = {name: int(rng.random() < 0.4) for name in NCCT_MARKERS}
        decided = dict(truth)
        if i % 10 == 0:  # one disagreement in ten cases, on the hypodensity
            decided["hypodensity"] = 1 - decided["hypodensity"]
        rows.append({"detected": True, "onset_to_ct_hours": float(rng.uniform(0.5, 8.0)),
                     **{f"truth_{k}": v for k, v in truth.items()},
                     **{f"marker_{k}": bool(v) for k, v in decided.items()}})
    section = marker_section(rows)
    assert section["n"] == 60
    assert section["markers"]["blend"]["kappa"] == pytest.approx(1.0)
    assert section["markers"]["hypodensity"]["kappa"] < 0.9
    assert section["bat"]["exact_agreement"] == pytest.approx(0.9)
    assert marker_section([{"detected": True}]) is None
