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
    # haematoma (70 HU) is the brightest structure: z = (70 - mean) / sd
    assert case.tensor.max() == pytest.approx((70.0 - case.brain_mean_hu) / case.brain_sd_hu, rel=0.25)
    # outside the brain everything is background (0 after windowing and clipping of negatives)
    assert np.all(case.tensor[~ndimage.binary_dilation(brain, iterations=2)] == 0.0)


def test_fov_is_centred_on_the_brain_centroid(phantom, case):
    mask = brain_mask(phantom.image)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    np.testing.assert_allclose(case.centre_lps, stats.GetCentroid(1), atol=1e-6)
    grid_centre = case.grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in case.grid.GetSize()])
    np.testing.assert_allclose(grid_centre, case.centre_lps, atol=1e-6)
    image_centre = phantom.image.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in phantom.image.GetSize()])
    assert np.linalg.norm(np.subtract(image_centre, case.centre_lps)) > 5.0  # phantom head is off-centre


def test_preprocess_small_plans_and_linear_interpolation(phantom):
    plans = Plans(matrix_zyx=(32, 96, 96), interpolation="linear")
    out = preprocess(phantom.image, plans)
    assert out.tensor.shape == (32, 96, 96)
    np.testing.assert_allclose(out.grid.GetSpacing(), (112 / 96, 112 / 96, 5.0))
    assert out.tensor.dtype == np.float32 and out.tensor.min() >= 0.0


def _dilate(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool))


@pytest.mark.parametrize("direction", [None, rotation_direction(12.0, -20.0)])
def test_round_trip_model_grid_mask_back_to_original_within_one_voxel(direction):
    ph = head_phantom(direction=direction)
    label = sitk.GetImageFromArray(ph.haematoma.astype(np.uint8))
    label.CopyInformation(ph.image)
    out = preprocess(ph.image, Plans())
    model_mask = resample_label_to_model_grid(label, out.grid)
    assert model_mask.shape == out.tensor.shape and model_mask.any()
    back = probabilities_to_reference(model_mask.astype(np.float32), out.grid, ph.image)
    assert back.shape == ph.haematoma.shape and back.dtype == np.float32
    back_mask = back >= 0.5
    truth = ph.haematoma
    assert np.all(back_mask <= _dilate(truth)), "mapped-back voxels further than one voxel from the truth"
    assert np.all(truth <= _dilate(back_mask)), "truth voxels further than one voxel from the mapped-back mask"
    assert back_mask.sum() == pytest.approx(truth.sum(), rel=0.08)


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
    """Source slices tilted by 15 degrees about x (gantry tilt), analysis grid orthogonal: every source pixel gets
    the mask value at its own physical position."""
    ph = head_phantom(shape=(30, 128, 128), spacing=(5.0, 1.9, 1.9))
    mask = sitk.GetImageFromArray(ph.haematoma.astype(np.uint8))
    mask.CopyInformation(ph.image)
    tilt = np.deg2rad(15.0)
    row_dir = (1.0, 0.0, 0.0)
    col_dir = (0.0, np.cos(tilt), np.sin(tilt))
    normal = np.cross(row_dir, col_dir)
    spacing = 1.9
    origin = np.array(ph.image.GetOrigin())
    slices = [
        SourceSlice(
            sop_instance_uid=f"1.2.3.{k}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            position=tuple(origin + k * 5.0 * normal / normal[2]), row_direction=row_dir,
            column_direction=tuple(col_dir), pixel_spacing=(spacing, spacing), rows=128, columns=128,
        )
        for k in range(30)
    ]
    frames = mask_to_source_slices(mask, slices)
    assert frames.shape == (30, 128, 128) and frames.dtype == np.uint8
    # analytic check at every pixel: the physical point falls in (or next to) the truth mask's voxel
    inside = _dilate(ph.haematoma)
    outside_far = ~_dilate(_dilate(ph.haematoma)) == False  # noqa: E712 - readable
    k, r, c = np.nonzero(frames)
    assert k.size > 0
    pts = origin + np.outer(k * 5.0 / normal[2], normal) + np.outer(c * spacing, row_dir) + np.outer(r * spacing, col_dir)
    idx = np.rint(
        (pts - origin) / np.array(ph.image.GetSpacing())
    ).astype(int)[:, ::-1]  # (z, y, x); identity direction
    assert inside[tuple(idx.T)].all()
    assert outside_far.any()
    # and conversely: pixels whose centre is deep inside the truth are set
    kk, rr, cc = np.meshgrid(np.arange(30), np.arange(128), np.arange(128), indexing="ij")
    pts_all = (origin + (kk * 5.0 / normal[2])[..., None] * normal + (cc * spacing)[..., None] * np.array(row_dir)
               + (rr * spacing)[..., None] * np.array(col_dir))
    ci = np.rint((pts_all - origin) / np.array(ph.image.GetSpacing())).astype(int)[..., ::-1]
    valid = np.all((ci >= 0) & (ci < np.array(ph.haematoma.shape)), axis=-1)
    core = ndimage.binary_erosion(ph.haematoma, structure=np.ones((3, 3, 3), bool))
    deep = np.zeros(frames.shape, bool)
    deep[valid] = core[tuple(ci[valid].T)]
    assert deep.any() and frames[deep].all()


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
