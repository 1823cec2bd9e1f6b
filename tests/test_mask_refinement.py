"""Partial-volume boundary refinement (app/model/mask_refinement.py) on analytic phantoms: a blurred sphere of
blood in brain, a too-small and a too-large network mask, a calcification beside the clot, and blood layering in a
ventricle (CSF in front of it)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from app.model.mask_refinement import BoundaryRefinement, refine_mask

SPACING = (5.0, 0.5, 0.5)  # z, y, x mm
SHAPE = (9, 160, 160)
ON = BoundaryRefinement(enabled=True)


def _grid():
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)), indexing="ij")
    return z - 20.0, y - 40.0, x - 40.0


def _sphere(radius_mm: float, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    z, y, x = _grid()
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius_mm ** 2


def _image(truth: np.ndarray, rng: np.random.Generator, clot_hu: float = 70.0, brain_hu: float = 32.0) -> np.ndarray:
    hu = np.where(truth, clot_hu, brain_hu).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, (0.0, 1.2, 1.2))  # scanner blur (in-plane PSF)
    return hu + rng.normal(0.0, 3.0, hu.shape).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("network_radius_mm", [13.0, 17.0])
def test_refinement_moves_a_misplaced_boundary_to_the_partial_volume_midpoint(network_radius_mm: float) -> None:
    rng = np.random.default_rng(7)
    truth = _sphere(15.0)
    hu = _image(truth, rng)
    network = _sphere(network_radius_mm)
    refined = refine_mask(hu, network, SPACING, ON)
    assert _dice(network, truth) < 0.93
    assert _dice(refined, truth) > 0.97
    assert abs(refined.sum() / truth.sum() - 1.0) < 0.05


def test_disabled_or_empty_masks_are_returned_unchanged() -> None:
    rng = np.random.default_rng(8)
    truth = _sphere(15.0)
    hu = _image(truth, rng)
    network = _sphere(13.0)
    assert np.array_equal(refine_mask(hu, network, SPACING, BoundaryRefinement()), network)
    empty = np.zeros(SHAPE, dtype=bool)
    assert not refine_mask(hu, empty, SPACING, ON).any()


def test_calcification_beside_the_clot_is_not_blood() -> None:
    rng = np.random.default_rng(9)
    truth = _sphere(15.0)
    calcification = _sphere(3.0, centre=(0.0, 0.0, 16.5)) & ~truth
    hu = _image(truth, rng)
    hu[calcification] = 400.0
    refined = refine_mask(hu, _sphere(16.0), SPACING, ON)
    assert not (refined & calcification).any()
    assert _dice(refined, truth) > 0.95


def test_blood_layering_in_a_ventricle_is_dropped_but_the_haematoma_is_kept() -> None:
    rng = np.random.default_rng(10)
    z, y, x = _grid()
    clot = _sphere(12.0, centre=(0.0, -10.0, -15.0))
    ventricle = (np.abs(x - 18.0) < 5.0) & (np.abs(y - 5.0) < 14.0) & (np.abs(z) < 12.0)
    layered_blood = ventricle & (y > 8.0)  # dependent (posterior) part of the ventricle
    hu = _image(clot | layered_blood, rng)
    hu[ventricle & ~layered_blood] = 6.0  # CSF in front of the blood
    network = clot | layered_blood
    refined = refine_mask(hu, network, SPACING, ON)
    assert (refined & layered_blood).sum() < 0.05 * layered_blood.sum()
    assert _dice(refined, clot) > 0.95
    neither = ON.model_copy(update={"drop_ventricular": False, "drop_layered": False})
    kept = refine_mask(hu, network, SPACING, neither)
    assert (kept & layered_blood).sum() > 0.8 * layered_blood.sum()
    # the component rule never drops the largest component; the fluid level against CSF still gives it away
    only_components = ON.model_copy(update={"drop_layered": False})
    assert refine_mask(hu, layered_blood, SPACING, only_components).sum() > 0.8 * layered_blood.sum()
    assert refine_mask(hu, layered_blood, SPACING, ON).sum() < 0.05 * layered_blood.sum()


def test_layered_blood_that_touches_the_clot_leaves_the_mask() -> None:
    rng = np.random.default_rng(11)
    z, y, x = _grid()
    clot = _sphere(12.0, centre=(0.0, 10.0, -8.0))
    ventricle = (np.abs(x - 9.0) < 5.0) & (np.abs(y - 5.0) < 14.0) & (np.abs(z) < 12.0) & ~clot
    layered_blood = ventricle & (y > 8.0)
    hu = _image(clot | layered_blood, rng)
    hu[ventricle & ~layered_blood] = 6.0
    merged = clot | layered_blood
    assert ndimage.label(merged)[1] == 1
    refined = refine_mask(hu, merged, SPACING, ON)
    assert (refined & layered_blood).sum() < 0.2 * layered_blood.sum()
    assert (refined & clot).sum() > 0.9 * clot.sum()


FLUID_LEVEL = BoundaryRefinement(enabled=True, complete_fluid_level=True)
LEAK_TOLERANT = FLUID_LEVEL.model_copy(update={"serum_within_width": True, "union_min_solidity": 0.75})


def _fluid_level_clot(serum_hu: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 15 mm sphere split by a horizontal (coronal) line: anterior part at ``serum_hu``, posterior part 72 HU."""
    _, y, _ = _grid()
    clot = _sphere(15.0)
    serum = clot & (y < -2.0)  # anterior (smaller y) is non-dependent when supine
    hu = np.where(clot, 72.0, 32.0).astype(np.float32)
    hu[serum] = serum_hu
    hu = ndimage.gaussian_filter(hu, (0.0, 1.2, 1.2)) + np.random.default_rng(12).normal(
        0.0, 3.0, hu.shape).astype(np.float32)
    return clot, serum, hu


def test_the_serum_part_of_a_fluid_level_is_kept_in_the_haematoma() -> None:
    clot, serum, hu = _fluid_level_clot(18.0)
    network = clot & ~serum  # the network and the density rule see only the dense part
    plain = refine_mask(hu, network, SPACING, ON)
    completed = refine_mask(hu, network, SPACING, FLUID_LEVEL)
    assert (plain & serum).sum() < 0.1 * serum.sum()
    assert (completed & serum).sum() > 0.8 * serum.sum()
    assert abs(completed.sum() / clot.sum() - 1.0) < 0.12
    assert _dice(completed, clot) > 0.9


@pytest.mark.parametrize("settings", [FLUID_LEVEL, LEAK_TOLERANT], ids=["strict", "within_width"])
def test_a_blood_csf_level_and_a_round_clot_beside_hypodense_brain_are_not_extended(
        settings: BoundaryRefinement) -> None:
    clot, serum, hu = _fluid_level_clot(5.0)  # CSF in front of blood: a ventricle, not serum
    completed = refine_mask(hu, clot & ~serum, SPACING, settings)
    assert (completed & serum).sum() < 0.1 * serum.sum()
    rng = np.random.default_rng(13)
    z, y, x = _grid()
    round_clot = _sphere(12.0)
    hypodense_brain = (y < -8.0) & (np.abs(x) < 25.0) & (np.abs(z) < 12.0) & ~round_clot  # old infarct in front
    hu = _image(round_clot, rng)
    hu[hypodense_brain] = 18.0
    completed = refine_mask(hu, round_clot, SPACING, settings)
    assert (completed & hypodense_brain).sum() < 0.05 * round_clot.sum()


def test_a_component_across_the_midline_from_the_haematoma_is_dropped() -> None:
    """Step 8 in the patient frame: the side is read in LPS through the grid's direction (here x flipped)."""
    import SimpleITK as sitk

    from app.model.mask_refinement import drop_contralateral

    shape = (10, 80, 80)
    geometry = sitk.Image(shape[2], shape[1], shape[0], sitk.sitkUInt8)
    geometry.SetSpacing((1.0, 1.0, 5.0))
    geometry.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    geometry.SetOrigin((40.0, -40.0, 0.0))  # x index 40 lies at LPS x = 0, the brain centroid below
    mask = np.zeros(shape, bool)
    mask[3:7, 30:50, 5:30] = True  # the haematoma: x index < 40, i.e. LPS x > 0 (patient left)
    mask[4:6, 60:66, 55:61] = True  # across the midline: LPS x < 0
    mask[4:6, 60:66, 33:37] = True  # on the haematoma's side
    on = BoundaryRefinement(enabled=True, drop_contralateral=True)
    out = drop_contralateral(mask, geometry, (0.0, 0.0, 20.0), on)
    assert out[3:7, 30:50, 5:30].all() and out[4:6, 60:66, 33:37].all()
    assert not out[4:6, 60:66, 55:61].any()
    near = drop_contralateral(mask, geometry, (-16.0, 0.0, 20.0), on.model_copy(update={"contralateral_min_mm": 3.0}))
    assert near[4:6, 60:66, 55:61].all(), "a component within contralateral_min_mm of the midline stays"
    for settings, centroid in ((BoundaryRefinement(enabled=True), (0.0, 0.0, 20.0)), (on, None)):
        assert np.array_equal(drop_contralateral(mask, geometry, centroid, settings), mask)



def test_serum_that_runs_into_hypodense_brain_beside_the_clot_is_kept_within_the_clots_width() -> None:
    clot, serum, hu = _fluid_level_clot(18.0)
    z, y, x = _grid()
    # hypodense white matter at the serum's density runs sideways from the serum part, past the clot's width
    strip = (np.abs(y + 9.0) < 2.5) & (np.abs(x) < 32.0) & (np.abs(z) < 12.0) & ~clot
    hu[strip] = 18.0
    network = clot & ~serum
    strict = refine_mask(hu, network, SPACING, FLUID_LEVEL)
    within = refine_mask(hu, network, SPACING, LEAK_TOLERANT)
    assert (strict & serum).sum() < 0.1 * serum.sum()  # the leak fails the width test: nothing is completed
    assert (within & serum).sum() > 0.7 * serum.sum()
    beside = strip & (np.abs(x) > 16.0)  # past the clot's own columns
    assert (within & beside).sum() == 0
    assert abs(within.sum() / clot.sum() - 1.0) < 0.15


def test_the_dense_part_of_a_fluid_level_is_not_taken_forlayered_blood() -> None:
    """Serum (12-24 HU) in front of a level is not CSF: a CSF bound above it cut the clot's dense part in strips."""
    clot, serum, hu = _fluid_level_clot(18.0)
    dense = clot & ~serum
    serum_as_csf = refine_mask(hu, dense, SPACING, ON.model_copy(update={"layer_csf_max_hu": 20.0}))
    below_serum = refine_mask(hu, dense, SPACING, ON.model_copy(update={"layer_csf_max_hu": 14.0}))
    assert (serum_as_csf & dense).sum() < 0.9 * dense.sum()
    assert (below_serum & dense).sum() > 0.97 * dense.sum()


def test_blood_layering_in_a_ventricle_inside_the_haematoma_leaves_the_mask() -> None:
    """A ventricle that the clot surrounds: CSF in front, blood behind a level; the network's mask fills it."""
    rng = np.random.default_rng(14)
    z, y, x = _grid()
    sphere = _sphere(16.0)
    ventricle = ((y / 7.0) ** 2 + (x / 5.0) ** 2 <= 1.0) & (np.abs(z) < 12.0)
    layered_blood = ventricle & (y >= 0.0)
    clot = sphere & ~ventricle
    hu = _image(clot | layered_blood, rng)
    hu[ventricle & ~layered_blood] = 6.0 + rng.normal(0.0, 3.0, int((ventricle & ~layered_blood).sum()))
    before = ON.model_copy(update={"layer_csf_max_hu": 14.0})
    after = before.model_copy(update={"drop_enclosed_csf": True, "layer_front_min_hu": 14.0})
    filled = refine_mask(hu, sphere, SPACING, before)
    emptied = refine_mask(hu, sphere, SPACING, after)
    assert (filled & layered_blood).sum() > 0.9 * layered_blood.sum()
    assert (filled & ventricle & ~layered_blood).sum() > 0.9 * (ventricle & ~layered_blood).sum()
    assert (emptied & layered_blood).sum() < 0.2 * layered_blood.sum()
    assert (emptied & ventricle & ~layered_blood).sum() < 0.4 * (ventricle & ~layered_blood).sum(), \
        "CSF is not blood (its partial-volume rim may stay)"
    assert (emptied & clot).sum() > 0.85 * clot.sum()


def test_csf_the_network_took_in_front_of_a_level_does_not_hide_it() -> None:
    """Step 6 on a mask that holds up to 3 mm of CSF, irregularly, in front of the level."""
    from app.model import ventricular_blood

    rng = np.random.default_rng(15)
    z, y, x = _grid()
    ventricle = (np.abs(x - 18.0) < 5.0) & (np.abs(y - 5.0) < 14.0) & (np.abs(z) < 12.0)
    layered_blood = ventricle & (y > 8.0)
    hu = _image(layered_blood, rng)
    hu[ventricle & ~layered_blood] = 6.0
    depth = np.round(rng.uniform(0.0, 3.0, SHAPE[2]) * 2.0) / 2.0  # mm, irregular from column to column
    bump = ventricle & (y <= 8.0) & (y > 8.0 - depth[None, None, :])
    mask = layered_blood | bump
    plain = ON.model_copy(update={"layer_csf_max_hu": 14.0})
    front = plain.model_copy(update={"layer_front_min_hu": 14.0})
    smoothed = ventricular_blood.csf_smoothed(hu, SPACING[1:])
    assert (ventricular_blood.layered_blood(mask, smoothed, SPACING[1:], plain) & layered_blood).sum() < 0.5 * layered_blood.sum()
    assert (ventricular_blood.layered_blood(mask, smoothed, SPACING[1:], front) & layered_blood).sum() > 0.85 * layered_blood.sum()


def _clot_in_front_of_a_ventricle(blood_hu: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clot lying in front of a ventricle whose blood continues the clot's columns; where the clot does not
    reach, the ventricle shows its fluid level against CSF. Returns (clot, blood, hu)."""
    rng = np.random.default_rng(16)
    z, y, x = _grid()
    clot = _sphere(12.0, (0.0, -8.0, 0.0))
    ventricle = (x > 0.0) & (x < 12.0) & (y > -4.0) & (y < 22.0) & (np.abs(z) < 12.0)
    blood = ventricle & (y > 4.0) & ~clot
    hu = np.where(clot, 70.0, np.where(blood, blood_hu, 32.0)).astype(np.float32)
    hu[ventricle & (y <= 4.0) & ~clot] = 6.0
    hu = ndimage.gaussian_filter(hu, (0.0, 1.2, 1.2)) + rng.normal(0.0, 3.0, hu.shape).astype(np.float32)
    return clot, blood, hu


def test_the_lobe_of_layered_blood_that_continues_the_clot_leaves_the_mask() -> None:
    clot, blood, hu = _clot_in_front_of_a_ventricle(70.0)
    layers = ON.model_copy(update={"layer_csf_max_hu": 14.0, "layer_front_min_hu": 14.0})
    lobes = layers.model_copy(update={"drop_layered_lobes": True})
    columns = refine_mask(hu, clot | blood, SPACING, layers)
    whole = refine_mask(hu, clot | blood, SPACING, lobes)
    assert (columns & blood).sum() > 0.3 * blood.sum(), "step 6 alone leaves the blood behind the clot"
    assert (whole & blood).sum() < 0.1 * blood.sum()
    assert (whole & clot).sum() > 0.93 * clot.sum()


def test_a_lobe_denser_or_lighter_than_the_layered_blood_is_clot() -> None:
    clot, blood, hu = _clot_in_front_of_a_ventricle(50.0)
    layers = ON.model_copy(update={"layer_csf_max_hu": 14.0, "layer_front_min_hu": 14.0})
    lobes = layers.model_copy(update={"drop_layered_lobes": True, "lobe_hu_tolerance": 5.0})
    columns = refine_mask(hu, clot | blood, SPACING, layers)
    whole = refine_mask(hu, clot | blood, SPACING, lobes)
    assert (whole & clot).sum() > 0.93 * clot.sum()
    assert (whole & blood).sum() <= (columns & blood).sum()


def test_the_lobes_watershed_splits_two_touching_balls_and_keeps_a_ridge_whole() -> None:
    from app.model.ventricular_blood import lobes_of

    spacing = (1.0, 1.0, 1.0)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in (40, 40, 70)), indexing="ij")
    big = (z - 20) ** 2 + (y - 20) ** 2 + (x - 22) ** 2 <= 12.0 ** 2
    small = (z - 20) ** 2 + (y - 20) ** 2 + (x - 41) ** 2 <= 8.0 ** 2
    lobes, depth = lobes_of(big | small, spacing, min_peak_mm=2.0, dynamic_mm=1.0)
    assert lobes.max() == 2 and depth.max() == pytest.approx(12.0, abs=0.6)
    a, b = lobes[20, 20, 22], lobes[20, 20, 43]
    assert a != b
    assert (lobes[big & ~small] == a).mean() > 0.95 and (lobes[small & ~big] == b).mean() > 0.95
    ridge = (np.abs(z - 20) <= 6) & (np.abs(y - 20) <= 6) & (x >= 5) & (x <= 64)  # a bar: one lobe, however long
    bar, _ = lobes_of(ridge, spacing, min_peak_mm=2.0, dynamic_mm=1.0)
    assert bar.max() == 1 and (bar[ridge] == 1).all()


def test_the_serum_of_a_clot_wrapped_round_a_ventricle_needs_the_lower_convexity_bound() -> None:
    """A crescent: the clot's dependent part curves round a ventricle (CSF in the bite), so the outline of serum and
    blood together is concave and fails a 0.85 solidity bound, but it is still a clot split by a level."""
    z, y, x = _grid()
    ventricle = (x ** 2 + (y - 12.0) ** 2 <= 10.0 ** 2) & (np.abs(z) < 20.0)
    clot = _sphere(15.0) & ~ventricle
    serum = clot & (y < -2.0)
    hu = np.where(clot, 72.0, 32.0).astype(np.float32)
    hu[serum] = 18.0
    hu[ventricle] = 6.0
    hu = ndimage.gaussian_filter(hu, (0.0, 1.2, 1.2)) + np.random.default_rng(17).normal(
        0.0, 3.0, hu.shape).astype(np.float32)
    network = clot & ~serum
    strict = refine_mask(hu, network, SPACING, FLUID_LEVEL)
    concave = refine_mask(hu, network, SPACING, FLUID_LEVEL.model_copy(update={"union_min_solidity": 0.75}))
    assert (strict & serum).sum() < 0.1 * serum.sum()
    assert (concave & serum).sum() > 0.9 * serum.sum()
    assert not (concave & ventricle).any() or (concave & ventricle).sum() < 0.05 * ventricle.sum()
    assert abs(concave.sum() / clot.sum() - 1.0) < 0.1
