"""Inverse of the preprocessing geometry: model-grid results back onto the analysis grid and onto the original
DICOM instances.

Two steps, used by inference:

1. :func:`probabilities_to_reference` maps the haematoma probability map from the model grid onto the
   analysis grid (``IngestedSeries.image``) with linear interpolation; the caller thresholds it there
   (``Plans.mask_threshold``). Thresholding after interpolation keeps the mask boundary at the interpolated
   iso-surface instead of the model grid's staircase.
2. :func:`mask_to_source_slices` maps a binary mask on the analysis grid onto every original instance, so that
   a DICOM SEG or overlay lines up pixel for pixel with the images the radiologist sees, including gantry
   tilted acquisitions whose slices are oblique to the (orthogonal) analysis grid.

Geometry is physical LPS (mm) throughout; arrays are (z, y, x) = (slice, row, column).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from app.ingestion.types import SourceSlice

#: tolerance (as a fraction of the smallest pixel spacing) for deciding that the analysis grid is the source grid
_SAME_GRID_TOLERANCE = 0.01


def probabilities_to_reference(prob: np.ndarray, grid: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Resample a model-grid probability map onto ``reference``'s grid.

    Args:
        prob: float (D, H, W) on ``grid`` (e.g. the sigmoid output of the segmentation head).
        grid: the model grid (``PreprocessedCase.grid``).
        reference: the image whose grid the result is on (usually ``IngestedSeries.image``).

    Returns:
        float32 (z, y, x) on ``reference``'s grid; linear interpolation, 0 outside the model grid.
    """
    prob = np.asarray(prob, dtype=np.float32)
    expected = tuple(reversed(grid.GetSize()))
    if prob.shape != expected:
        raise ValueError(f"probability map shape {prob.shape} does not match the model grid {expected}")
    moving = sitk.GetImageFromArray(prob)
    moving.CopyInformation(grid)
    out = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _slice_frame(s: SourceSlice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row_dir = np.asarray(s.row_direction, dtype=float)
    col_dir = np.asarray(s.column_direction, dtype=float)
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def _is_same_grid(mask: sitk.Image, slices: list[SourceSlice]) -> bool:
    """True when slice k of ``mask`` is exactly the k-th source instance (position, axes, spacing, matrix)."""
    cols, rows, n = mask.GetSize()
    if n != len(slices):
        return False
    sx, sy, _ = mask.GetSpacing()
    d = np.asarray(mask.GetDirection()).reshape(3, 3)
    tol = _SAME_GRID_TOLERANCE * min(sx, sy)
    for k, s in enumerate(slices):
        if (s.rows, s.columns) != (rows, cols):
            return False
        if abs(s.pixel_spacing[0] - sy) > tol or abs(s.pixel_spacing[1] - sx) > tol:
            return False
        row_dir, col_dir, _ = _slice_frame(s)
        if not (np.allclose(row_dir, d[:, 0], atol=1e-4) and np.allclose(col_dir, d[:, 1], atol=1e-4)):
            return False
        if np.linalg.norm(np.subtract(mask.TransformIndexToPhysicalPoint((0, 0, k)), s.position)) > tol:
            return False
    return True


def mask_to_source_slices(mask: sitk.Image, slices: list[SourceSlice]) -> np.ndarray:
    """Map a binary mask on the analysis grid onto each original DICOM instance.

    Pixel (r, c) of source slice k lies at ``position + c * pixel_spacing[1] * row_direction +
    r * pixel_spacing[0] * column_direction`` (DICOM C.7.6.2.1.1). The mask (any value > 0 is foreground) is
    interpolated linearly at that point and thresholded at >= 0.5, the same rule as
    :func:`app.preprocessing.pipeline.resample_label_to_model_grid`; points outside the mask image are 0.

    When the analysis grid is the source grid itself (an untilted, evenly spaced series), the mask is returned
    as is (fast path, no interpolation).

    Returns:
        uint8 (n_slices, rows, columns), frame k for ``slices[k]``.
    """
    if not slices:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    if _is_same_grid(mask, slices):
        return (sitk.GetArrayViewFromImage(mask) > 0).astype(np.uint8)
    rows, cols = slices[0].rows, slices[0].columns
    if any((s.rows, s.columns) != (rows, cols) for s in slices):
        raise ValueError("source slices of one series must share one matrix size")
    binary = sitk.Cast(sitk.Greater(mask, 0), sitk.sitkFloat32)
    out = np.zeros((len(slices), rows, cols), dtype=np.uint8)
    frame = sitk.Image([cols, rows, 1], sitk.sitkUInt8)
    resampler = sitk.ResampleImageFilter()
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    for k, s in enumerate(slices):
        row_dir, col_dir, normal = _slice_frame(s)
        frame.SetOrigin(tuple(float(v) for v in s.position))
        frame.SetSpacing((float(s.pixel_spacing[1]), float(s.pixel_spacing[0]), 1.0))
        frame.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel()))
        resampler.SetReferenceImage(frame)
        sampled = resampler.Execute(binary)  # keep the image alive while its buffer is viewed
        out[k] = sitk.GetArrayViewFromImage(sampled)[0] >= 0.5
    return out
