"""Property-based tests (hypothesis) of ingestion and geometry (invariants of the reader).

* any permutation of the files gives the same volume;
* any orientation sign convention (rows and/or columns stored mirrored, with ImageOrientationPatient and
  ImagePositionPatient saying so; slices stacked head-first or feet-first) gives the same HU at the same
  physical LPS points, and the same mask on the original instances after a round trip through preprocessing
  (preprocess -> a mask on the model grid -> probabilities_to_reference -> mask_to_source_slices);
* any valid spacing (pixel spacing 0.3-1.0 mm, slice spacing 1-6 mm) gives a volume with matching geometry.

Series are real DICOM files written with pydicom (tests/dicom_factory.py). Small example counts, no deadline;
budget < 45 s in total.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from dicom_factory import write_ct_series
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.ingestion import IngestedSeries, load_series
from app.preprocessing.inverse import mask_to_source_slices, probabilities_to_reference
from app.preprocessing.pipeline import preprocess
from app.preprocessing.plans import Plans

PROPERTY_SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow])

# a small head: 96 x 96 pixels of 2 mm (192 mm field of view), 14 slices of 8 mm
ROWS = COLS = 96
PIXEL_MM = 2.0
N_SLICES = 14
SLICE_MM = 8.0
CORNER = np.array([-95.0, -95.0, 0.0])  # LPS of the first pixel of the most inferior slice, unflipped
HEAD_CENTRE = np.array([0.0, 0.0, 52.0])
LESION_CENTRE = np.array([18.0, -10.0, 60.0])
LESION_RADIUS = 14.0


def head_hu(points: np.ndarray) -> np.ndarray:
    """Skull (1000 HU) around brain (32 HU, with a smooth left-right gradient) with a 60 HU haematoma."""
    rel = (points - HEAD_CENTRE) / np.array([72.0, 86.0, 60.0])
    r = np.linalg.norm(rel, axis=-1)
    hu = np.where(r <= 1.0, 1000.0, -1000.0)
    hu = np.where(r <= 0.9, 32.0 + 0.05 * points[..., 0], hu)
    hu = np.where(np.linalg.norm(points - LESION_CENTRE, axis=-1) <= LESION_RADIUS, 60.0, hu)
    return np.round(hu)


def write_head(directory: Path, flip_rows: bool, flip_columns: bool) -> list[Path]:
    """The same physical head, stored with mirrored rows and/or columns (IOP/IPP consistent with the pixels).

    Flipping exactly one in-plane axis also reverses the slice normal, so the volume is stacked feet-first.
    """
    r = np.array([-1.0 if flip_rows else 1.0, 0.0, 0.0])
    c = np.array([0.0, -1.0 if flip_columns else 1.0, 0.0])
    origin = CORNER.copy()
    if flip_rows:
        origin[0] += (COLS - 1) * PIXEL_MM
    if flip_columns:
        origin[1] += (ROWS - 1) * PIXEL_MM
    return write_ct_series(directory, n_slices=N_SLICES, rows=ROWS, cols=COLS, pixel_spacing=(PIXEL_MM, PIXEL_MM),
                           spacing=SLICE_MM, origin=origin, hu_at=head_hu, orientation=(*r, *c), seed=1)


@lru_cache(maxsize=1)
def reference_files() -> tuple[bytes, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        return tuple(p.read_bytes() for p in write_head(Path(tmp), False, False))


@lru_cache(maxsize=1)
def reference_series() -> IngestedSeries:
    return load_series(list(reference_files()))


def lesion_mask_on_source_slices(series: IngestedSeries) -> np.ndarray:
    """preprocess -> lesion mask drawn on the model grid (physical sphere) -> analysis grid -> source slices."""
    case = preprocess(series.image, Plans())
    grid = case.grid
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.GetSize()], indexing="ij"), axis=-1).reshape(-1, 3)
    origin, spacing = np.asarray(grid.GetOrigin()), np.asarray(grid.GetSpacing())
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    pts = origin + (idx * spacing) @ direction.T  # (x, y, z) index order
    inside = np.linalg.norm(pts - LESION_CENTRE, axis=-1) <= LESION_RADIUS - 1.0
    prob = inside.reshape(grid.GetSize()).transpose(2, 1, 0).astype(np.float32)  # -> (z, y, x)
    on_reference = probabilities_to_reference(prob, grid, series.image) >= 0.5
    mask = sitk.GetImageFromArray(on_reference.astype(np.uint8))
    mask.CopyInformation(series.image)
    return mask_to_source_slices(mask, series.slices)


def in_reference_order(per_slice: np.ndarray, series: IngestedSeries) -> np.ndarray:
    """Per-source-slice arrays of a mirrored series, brought back to the unflipped reference layout."""
    z = np.array([s.position[2] for s in series.slices])
    out = per_slice[np.argsort(z)]
    r, c = series.slices[0].row_direction, series.slices[0].column_direction
    if r[0] < 0:
        out = out[:, :, ::-1]
    if c[1] < 0:
        out = out[:, ::-1, :]
    return out


@PROPERTY_SETTINGS
@given(order=st.permutations(range(N_SLICES)))
def test_any_file_order_gives_the_same_volume(order: list[int]) -> None:
    files = reference_files()
    series = load_series([files[i] for i in order])
    ref = reference_series()
    np.testing.assert_array_equal(series.hu_array, ref.hu_array)
    assert series.image.GetOrigin() == ref.image.GetOrigin()
    assert series.image.GetDirection() == ref.image.GetDirection()
    assert [s.sop_instance_uid for s in series.slices] == [s.sop_instance_uid for s in ref.slices]


@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(flip_rows=st.booleans(), flip_columns=st.booleans(), reverse_files=st.booleans())
@example(flip_rows=True, flip_columns=False, reverse_files=False)  # feet-first stack, mirrored rows
@example(flip_rows=False, flip_columns=True, reverse_files=True)  # feet-first stack, mirrored columns
@example(flip_rows=True, flip_columns=True, reverse_files=False)  # rotated 180 degrees in-plane
def test_any_orientation_convention_gives_the_same_hu_and_mask(
    flip_rows: bool, flip_columns: bool, reverse_files: bool
) -> None:
    ref = reference_series()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_head(Path(tmp), flip_rows, flip_columns)
        series = load_series(list(reversed(paths)) if reverse_files else paths)
    # same HU at the same physical points: sample the mirrored volume at the reference voxel centres
    same_points = sitk.Resample(series.image, ref.image, sitk.Transform(), sitk.sitkNearestNeighbor, -5000.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same_points), ref.hu_array)
    normal = np.cross(series.slices[0].row_direction, series.slices[0].column_direction)
    assert np.allclose(np.asarray(series.image.GetDirection()).reshape(3, 3)[:, 2], normal)
    # the same mask on the original instances after the preprocessing round trip
    mask = in_reference_order(lesion_mask_on_source_slices(series), series)
    ref_mask = lesion_mask_on_source_slices(ref)
    assert ref_mask.sum() > 100
    np.testing.assert_array_equal(mask, ref_mask)


@PROPERTY_SETTINGS
@given(
    row_mm=st.floats(0.3, 1.0), col_mm=st.floats(0.3, 1.0), slice_mm=st.floats(1.0, 6.0),
    z0=st.floats(-200.0, 200.0),
)
def test_any_valid_spacing_gives_matching_geometry(row_mm: float, col_mm: float, slice_mm: float, z0: float) -> None:
    rows, cols, n = 20, 24, 5
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_ct_series(tmp, n_slices=n, rows=rows, cols=cols, pixel_spacing=(row_mm, col_mm),
                                spacing=slice_mm, origin=(-5.0, -7.0, z0),
                                hu_at=lambda p: np.round(10 * p[..., 0] - 3 * p[..., 1] + 2 * p[..., 2]), seed=2)
        series = load_series(paths)
    assert not series.resampled
    assert series.image.GetSize() == (cols, rows, n)
    # spacing is written with 6 decimals, positions with 6 decimals
    np.testing.assert_allclose(series.image.GetSpacing(), (col_mm, row_mm, slice_mm), atol=2e-6)
    np.testing.assert_allclose(series.image.GetOrigin(), (-5.0, -7.0, z0), atol=1e-5)
    # the voxel (k, j, i) holds the HU of its physical position
    k, j, i = n - 1, rows - 1, cols - 1
    x, y, z = series.image.TransformIndexToPhysicalPoint((i, j, k))
    expected = np.round(10 * x - 3 * y + 2 * z)
    assert abs(float(series.hu_array[k, j, i]) - expected) <= 1.0
