"""Preprocessing (skull stripping, resampling, windowing, normalisation) and its inverse, on numpy head phantoms
written into SimpleITK images with realistic CT geometry (0.49 x 0.49 x 5 mm, non-zero origin, optional
rotated direction), and a look at a real GE head series."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from app.errors import IngestionError, RefusalCode
from app.ingestion.types import SourceSlice
from app.preprocessing import (
    Plans,
    brain_mask,
    mask_to_source_slices,
    preprocess,
    probabilities_to_reference,
    resample_label_to_model_grid,
)
from app.volumetry import touches_fov_edge, volume_ml

SPACING_ZYX = (5.0, 0.488281, 0.488281)
ORIGIN_LPS = (-118.3, -131.7, -42.5)


@dataclass
class Phantom:
    image: sitk.Image  # HU float32
    brain: np.ndarray  # bool (z, y, x): intracranial content (brain, CSF, ventricles, haematoma)
    skull: np.ndarray
    scalp: np.ndarray
    ventricles: np.ndarray
    haematoma: np.ndarray


def _ellipsoid(shape, spacing, centre_mm, semi_mm) -> np.ndarray:
    """Boolean ellipsoid on a (z, y, x) grid; centre and semi-axes in mm in the index frame, (z, y, x)."""
    axes = [(np.arange(n) * s - c) / r for n, s, c, r in zip(shape, spacing, centre_mm, semi_mm, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return (z**2 + y**2 + x**2) <= 1.0


def rotation_direction(deg_about_x: float, deg_about_z: float) -> tuple[float, ...]:
    a, b = np.deg2rad(deg_about_x), np.deg2rad(deg_about_z)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return tuple((rz @ rx).ravel())


def head_phantom(
    shape=(30, 512, 512),
    spacing=SPACING_ZYX,
    origin=ORIGIN_LPS,
    direction: tuple[float, ...] | None = None,
    haematoma_semi_mm=(12.0, 18.0, 13.0),
    seed: int = 7,
) -> Phantom:
    """Ellipsoidal head: scalp (40 HU), skull (1200 HU), CSF rim (8 HU), grey (38) and white matter (28),
    two ventricles (6 HU) and a haematoma (70 HU), Gaussian noise (SD 4 HU) and a 0.4 mm blur. The head centre
    is off the image centre so that the brain centroid and the image centre differ. Slice 0 cuts the skull base."""
    rng = np.random.default_rng(seed)
    extent = np.array(shape) * np.array(spacing)
    c = np.array([55.0, extent[1] / 2 + 9.0, extent[2] / 2 - 7.0])  # (z, y, x) mm in the index frame
    head = _ellipsoid(shape, spacing, c, (95.0, 100.0, 82.0))
    skull_outer = _ellipsoid(shape, spacing, c, (89.0, 94.0, 76.0))
    inner = _ellipsoid(shape, spacing, c, (83.0, 88.0, 70.0))
    cortex = _ellipsoid(shape, spacing, c, (81.0, 86.0, 68.0))
    white = _ellipsoid(shape, spacing, c, (60.0, 66.0, 50.0))
    vl = _ellipsoid(shape, spacing, c + (12.0, -4.0, -9.0), (22.0, 28.0, 5.0))
    vr = _ellipsoid(shape, spacing, c + (12.0, -4.0, 9.0), (22.0, 28.0, 5.0))
    haem = _ellipsoid(shape, spacing, c + (20.0, 16.0, 34.0), haematoma_semi_mm)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[head] = 40.0
    hu[skull_outer] = 1200.0
    hu[inner] = 8.0
    hu[cortex] = 38.0
    hu[white] = 28.0
    ventricles = (vl | vr) & inner
    hu[ventricles] = 6.0
    haem &= cortex
    hu[haem] = 70.0
    sigma = [0.0, 0.4 / spacing[1], 0.4 / spacing[2]]
    hu = ndimage.gaussian_filter(hu, sigma) + rng.normal(0.0, 4.0, shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return Phantom(image, inner, skull_outer & ~inner, head & ~skull_outer, ventricles, haem)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return head_phantom()


@pytest.fixture(scope="module")
def case(phantom):
    return preprocess(phantom.image, Plans())


def test_brain_mask_keeps_haematoma_and_ventricles_and_drops_skull_and_scalp(phantom):
    mask = sitk.GetArrayFromImage(brain_mask(phantom.image)).astype(bool)
    assert mask.shape == phantom.brain.shape
    assert mask[phantom.haematoma].all()
    assert mask[phantom.ventricles].all()
    assert not mask[phantom.scalp].any()
    assert mask[phantom.skull].mean() < 0.002  # at most the partial-volume rim of the inner table
    dice = 2 * np.count_nonzero(mask & phantom.brain) / (mask.sum() + phantom.brain.sum())
    assert dice > 0.97


def test_brain_mask_refuses_an_image_without_a_head():
    rng = np.random.default_rng(3)
    air = sitk.GetImageFromArray(rng.normal(-1000, 5, (20, 128, 128)).astype(np.float32))
    air.SetSpacing((1.0, 1.0, 5.0))
    with pytest.raises(IngestionError) as err:
        brain_mask(air)
    assert err.value.code == RefusalCode.BRAIN_NOT_FOUND


def test_brain_mask_refuses_soft_tissue_without_skull():
    """A water cylinder (body-CT-like, no enclosing bone) is no brain."""
    shape, spacing = (20, 200, 200), (5.0, 1.0, 1.0)
    cyl = _ellipsoid(shape, spacing, (50.0, 100.0, 100.0), (1e6, 80.0, 80.0))
    hu = np.where(cyl, 30.0, -1000.0).astype(np.float32)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(spacing[::-1])
    with pytest.raises(IngestionError) as err:
        brain_mask(img)
    assert err.value.code == RefusalCode.BRAIN_NOT_FOUND


def test_preprocess_paper_plans_shape_range_and_zscore(phantom, case):
    plans = Plans()
    assert case.tensor.shape == (32, 256, 256) == plans.matrix_zyx
    assert case.tensor.dtype == np.float32
    assert case.tensor.min() >= 0.0
    assert case.brain_mask.shape == case.tensor.shape and case.brain_mask.dtype == np.uint8
    assert case.grid.GetSize() == (256, 256, 32)
    np.testing.assert_allclose(case.grid.GetSpacing(), (0.4375, 0.4375, 5.0))
    np.testing.assert_allclose(case.grid.GetDirection(), np.eye(3).ravel())
    brain = case.brain_mask.astype(bool)
    # the z-score rule: tensor = max((clip(HU, 0, 100) - mean) / sd, 0) inside the brain, with mean/sd of the
    # windowed brain values; so tensor * sd + mean reproduces the windowed HU wherever it is above the mean
    windowed = case.tensor[brain] * case.brain_sd_hu + case.brain_mean_hu
    positive = case.tensor[brain] > 0
    assert 0.0 <= windowed.min() and windowed.max() <= 100.0 + 1e-3
    assert 20.0 < case.brain_mean_hu < 40.0 and 3.0 < case.brain_sd_hu < 20.0
    # half of a roughly symmetric brain distribution lies above the mean
    assert 0.3 < positive.mean() < 0.7
    # the haematoma (70 HU) maps to z = (70 - mean) / sd on average
    label = sitk.GetImageFromArray(ndimage.binary_erosion(phantom.haematoma, iterations=2).astype(np.uint8))
    label.CopyInformation(phantom.image)
    haem = resample_label_to_model_grid(label, case.grid).astype(bool)
    assert haem.sum() > 1000
    expected = (70.0 - case.brain_mean_hu) / case.brain_sd_hu
    assert float(case.tensor[haem].mean()) == pytest.approx(expected, rel=0.03)
    # outside the brain everything is background (0 after windowing and clipping of negatives)
    assert np.all(case.tensor[~ndimage.binary_dilation(brain, iterations=2)] == 0.0)


def test_unclipped_zscore_keeps_what_is_less_dense_than_the_brain(phantom, case):
    """The "brain_zscore" option is the paper's z-score without setting negatives to zero: identical above the
    brain's mean, and below it the densities (white matter, CSF, background) stay apart instead of all reading 0."""
    kept = preprocess(phantom.image, Plans(normalisation="brain_zscore"))
    assert kept.brain_mean_hu == pytest.approx(case.brain_mean_hu) and kept.brain_sd_hu == pytest.approx(case.brain_sd_hu)
    np.testing.assert_allclose(np.maximum(kept.tensor, 0.0), case.tensor, atol=1e-6)
    brain = kept.brain_mask.astype(bool)
    below = kept.tensor[brain][kept.tensor[brain] < 0]
    assert below.size > 0.2 * brain.sum() and np.unique(np.round(below, 2)).size > 20
    background = (0.0 - kept.brain_mean_hu) / kept.brain_sd_hu
    outside = ~ndimage.binary_dilation(brain, iterations=2)
    assert float(np.median(kept.tensor[outside])) == pytest.approx(background, abs=1e-4)
    assert Plans(normalisation="brain_zscore").fingerprint() != Plans().fingerprint()


def test_fov_is_centred_on_the_brain_centroid(phantom, case):
    mask = brain_mask(phantom.image)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    np.testing.assert_allclose(case.centre_lps, stats.GetCentroid(1), atol=1e-6)
    grid_centre = case.grid.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in case.grid.GetSize()]
    )
    np.testing.assert_allclose(grid_centre, case.centre_lps, atol=1e-6)
    image_centre = phantom.image.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in phantom.image.GetSize()]
    )
    assert np.linalg.norm(np.subtract(image_centre, case.centre_lps)) > 5.0  # phantom head is off-centre


def test_preprocess_small_plans_and_linear_interpolation(phantom):
    plans = Plans(matrix_zyx=(32, 96, 96), interpolation="linear")
    out = preprocess(phantom.image, plans)
    assert out.tensor.shape == (32, 96, 96)
    np.testing.assert_allclose(out.grid.GetSpacing(), (112 / 96, 112 / 96, 5.0))
    assert out.tensor.dtype == np.float32 and out.tensor.min() >= 0.0


def _dilate(mask: np.ndarray, reach_zyx=(1, 1, 1)) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=np.ones([2 * r + 1 for r in reach_zyx], bool))


def _one_model_voxel_reach(source: sitk.Image, grid: sitk.Image) -> tuple[int, int, int]:
    """How many source voxels along each source axis (z, y, x) one model-grid voxel spans: the footprint of the
    box of +-1 model voxel along the model axes, projected on the source axes. 1 on every axis when the grids
    are parallel with similar spacing; more in-plane when the source is tilted against the 5 mm model slices."""
    rotation = np.asarray(source.GetDirection()).reshape(3, 3).T @ np.asarray(grid.GetDirection()).reshape(
        3, 3
    )
    reach_mm = np.abs(rotation) @ np.asarray(grid.GetSpacing())
    reach = np.ceil(reach_mm / np.asarray(source.GetSpacing()) - 0.05).astype(int)  # 5 % slack for rounding
    return tuple(int(v) for v in reach[::-1])


@pytest.fixture(scope="module")
def rotated_phantom() -> Phantom:
    return head_phantom(direction=rotation_direction(12.0, -20.0))


@pytest.fixture(scope="module")
def rotated_case(rotated_phantom):
    return preprocess(rotated_phantom.image, Plans())


@pytest.mark.parametrize("which", ["axial", "rotated"])
def test_round_trip_model_grid_mask_back_to_original_within_one_voxel(request, which):
    """Truth mask -> model grid -> back onto the original grid lies within one voxel of the truth: one voxel
    of the original grid per axis for an axial source, one model-grid voxel (projected onto the original
    axes) for a source rotated by 12 degrees about x and -20 degrees about z."""
    ph = request.getfixturevalue("phantom" if which == "axial" else "rotated_phantom")
    out = request.getfixturevalue("case" if which == "axial" else "rotated_case")
    label = sitk.GetImageFromArray(ph.haematoma.astype(np.uint8))
    label.CopyInformation(ph.image)
    model_mask = resample_label_to_model_grid(label, out.grid)
    assert model_mask.shape == out.tensor.shape and model_mask.dtype == np.uint8
    assert not touches_fov_edge(model_mask)
    back = probabilities_to_reference(model_mask.astype(np.float32), out.grid, ph.image)
    assert back.shape == ph.haematoma.shape and back.dtype == np.float32
    reach = (1, 1, 1) if which == "axial" else _one_model_voxel_reach(ph.image, out.grid)
    if which == "rotated":
        assert max(reach[1:]) > 1  # the tilt mixes the 5 mm model slices into the in-plane axes
    # compare inside the haematoma's bounding box (plus margin): the rest is empty in both
    box = tuple(slice(max(0, int(i.min()) - 4), int(i.max()) + 5) for i in np.nonzero(ph.haematoma))
    back_mask, truth = back[box] >= 0.5, ph.haematoma[box]
    assert not (back >= 0.5).sum() - back_mask.sum()  # nothing outside the box
    assert np.all(back_mask <= _dilate(truth, reach)), "mapped-back voxels more than one voxel from the truth"
    assert np.all(truth <= _dilate(back_mask, reach)), (
        "truth voxels more than one voxel from the mapped-back mask"
    )
    assert volume_ml(back_mask, ph.image.GetSpacing()[::-1]) == pytest.approx(
        volume_ml(truth, ph.image.GetSpacing()[::-1]), rel=0.08
    )


def test_probabilities_outside_the_model_grid_are_zero(case, phantom):
    ones = np.ones(case.tensor.shape, np.float32)
    back = probabilities_to_reference(ones, case.grid, phantom.image)
    assert back[0, 0, 0] == 0.0  # image corner is far outside the 112 mm field of view
    assert back.max() == pytest.approx(1.0)


def _source_slices_of(image: sitk.Image) -> list[SourceSlice]:
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    sx, sy, _ = image.GetSpacing()
    return [
        SourceSlice(
            sop_instance_uid=f"1.2.3.{k}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            position=tuple(image.TransformIndexToPhysicalPoint((0, 0, k))),
            row_direction=tuple(d[:, 0]),
            column_direction=tuple(d[:, 1]),
            pixel_spacing=(sy, sx),
            rows=image.GetSize()[1],
            columns=image.GetSize()[0],
        )
        for k in range(image.GetSize()[2])
    ]


def test_mask_to_source_slices_fast_path_is_identity(phantom):
    mask = sitk.GetImageFromArray(phantom.haematoma.astype(np.uint8))
    mask.CopyInformation(phantom.image)
    frames = mask_to_source_slices(mask, _source_slices_of(phantom.image))
    assert frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, phantom.haematoma.astype(np.uint8))


def test_mask_to_source_slices_on_tilted_acquisition():
    """Source slices tilted by 15 degrees about x (gantry tilt) against an orthogonal analysis grid: every source
    pixel gets the mask value at its own physical position (within one analysis voxel at the boundary)."""
    ph = head_phantom(shape=(30, 128, 128), spacing=(5.0, 1.9, 1.9))
    mask = sitk.GetImageFromArray(ph.haematoma.astype(np.uint8))
    mask.CopyInformation(ph.image)
    tilt = np.deg2rad(15.0)
    row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(tilt), np.sin(tilt)])
    normal = np.cross(row_dir, col_dir)
    origin, pixel = np.array(ph.image.GetOrigin()), 1.9
    positions = [origin + k * 5.0 * normal / normal[2] for k in range(30)]  # one slice every 5 mm along z
    slices = [
        SourceSlice(
            sop_instance_uid=f"1.2.3.{k}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            position=tuple(p),
            row_direction=tuple(row_dir),
            column_direction=tuple(col_dir),
            pixel_spacing=(pixel, pixel),
            rows=128,
            columns=128,
        )
        for k, p in enumerate(positions)
    ]
    frames = mask_to_source_slices(mask, slices)
    assert frames.shape == (30, 128, 128) and frames.dtype == np.uint8

    # physical position of every source pixel -> nearest voxel of the (identity-direction) analysis grid
    k, r, c = np.meshgrid(np.arange(30), np.arange(128), np.arange(128), indexing="ij")
    points = np.asarray(positions)[k] + (c * pixel)[..., None] * row_dir + (r * pixel)[..., None] * col_dir
    index = np.rint((points - origin) / np.array(ph.image.GetSpacing())).astype(int)[..., ::-1]  # (z, y, x)
    valid = np.all((index >= 0) & (index < np.array(ph.haematoma.shape)), axis=-1)
    at = tuple(index[valid].T)
    core = ndimage.binary_erosion(ph.haematoma, structure=np.ones((3, 3, 3), bool))
    assert core[at].any()
    assert frames[valid][core[at]].all(), "pixels deep inside the haematoma must be set"
    assert not frames[valid][~_dilate(ph.haematoma)[at]].any(), "pixels away from the haematoma must be clear"
    assert not frames[~valid].any()
    # the tilted frames differ from the analysis slices (the planes are oblique), so no fast path was taken
    assert not np.array_equal(frames, ph.haematoma.astype(np.uint8))


def test_separable_bspline_matches_simpleitk_for_shared_rotated_direction():
    """The fast separable cubic B-spline path equals SimpleITK's B-spline resampling (``orientation="source"``
    with a rotated input), and so does the whole pipeline with the fallback path."""
    from app.preprocessing.pipeline import _separable_bspline_resample, model_grid

    rng = np.random.default_rng(11)
    values = rng.normal(30.0, 10.0, (9, 40, 36)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.49, 0.52, 5.0))
    image.SetOrigin((-10.0, 4.0, 30.0))
    image.SetDirection(rotation_direction(10.0, 25.0))
    centre = image.TransformContinuousIndexToPhysicalPoint((17.0, 21.0, 4.0))
    grid = model_grid(
        centre, Plans(matrix_zyx=(8, 48, 40), fov_mm_zyx=(40.0, 22.0, 20.0)), image.GetDirection()
    )
    expected = sitk.GetArrayFromImage(
        sitk.Resample(image, grid, sitk.Transform(), sitk.sitkBSpline, -1024.0, sitk.sitkFloat32)
    )
    got = _separable_bspline_resample(image, values, grid, -1024.0)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert (got == -1024.0).any() and (got != -1024.0).any()  # both inside and outside points were exercised


def test_real_ge_head_series_skull_strip(shared_data):
    """The real GE head CT (tilted; read here as-is for a look at the intensities) yields a plausible brain."""
    folder = shared_data / "dcm_qa_ct" / "In" / "GE"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(True)
    mask = brain_mask(image)
    arr = sitk.GetArrayViewFromImage(mask).astype(bool)
    hu = sitk.GetArrayViewFromImage(image)
    volume_ml = arr.sum() * np.prod(image.GetSpacing()) / 1000
    assert 300 < volume_ml < 1800
    assert 15 < float(np.median(hu[arr])) < 50  # brain parenchyma, not bone or air
    assert np.mean(hu[arr] > 150) < 0.005
    out = preprocess(image, Plans())
    assert out.tensor.shape == (32, 256, 256) and out.tensor.min() >= 0
