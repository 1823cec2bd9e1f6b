"""The paper's preprocessing: HU volume -> model input tensor (Zhong et al. 2021, supplement).

Order of operations (all parameters from :class:`~app.preprocessing.plans.Plans`):

1. skull stripping (:func:`app.preprocessing.skull_strip.brain_mask`, Otsu's method);
2. the field of view (``plans.fov_mm_zyx``, default 160 x 112 x 112 mm) is centred on the brain-mask centroid
   in LPS coordinates (``plans.centre``): 112 mm is narrower than most heads, so centring on the image or the
   head would cut the brain asymmetrically;
3. the model grid is ``plans.matrix_zyx`` voxels (default 32 x 256 x 256) of ``plans.spacing_zyx`` mm
   (default 5 x 0.4375 x 0.4375 mm) with axes along L, P, S (``plans.orientation="identity"``) or along the
   input's direction cosines (``"source"``);
4. the skull-stripped HU image (non-brain voxels set to ``plans.background_hu``) is resampled once onto the
   model grid with a cubic B-spline (``plans.interpolation``, the paper's "bicubic"); points outside the input
   also get ``plans.background_hu`` (0 HU by default: see ``Plans.background_hu``). The brain mask is resampled
   with nearest neighbour. Only the input voxels covering the field of view (plus 8 voxels) are touched, and
   when the input and the model grid share one direction matrix (the usual axial case) the cubic B-spline is
   evaluated as three separable sparse 1D passes (:mod:`app.preprocessing.bspline`): numerically SimpleITK's
   ``sitkBSpline`` (same mirror boundary and inside-buffer rule; see the tests) and much faster. Otherwise
   ``sitk.Resample`` does it;
5. window to ``plans.window_hu`` (default 0-100 HU);
6. z-score with the mean and SD of the windowed values inside the brain mask on the model grid (the brain
   inside the field of view), then negatives set to zero (``plans.normalisation`` "brain_zscore" keeps them).

The returned tensor is float32 (D, H, W) = (z, y, x); index z increases towards the patient's head (S) for the
identity orientation, y towards posterior, x towards the patient's left.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from app.errors import IngestionError, RefusalCode
from app.preprocessing.bspline import same_direction, separable_bspline_resample
from app.preprocessing.plans import Plans
from app.preprocessing.skull_strip import brain_mask

#: the old name of :func:`app.preprocessing.bspline.separable_bspline_resample`
_separable_bspline_resample = separable_bspline_resample

#: input voxels kept around the field of view when cropping before the B-spline resampling; the cubic
#: B-spline prefilter's influence decays as 0.268**n, so 8 voxels make the crop numerically invisible (< 3e-5)
_CROP_MARGIN_VOXELS = 8

_INTERPOLATORS = {"bspline": sitk.sitkBSpline, "linear": sitk.sitkLinear}


@dataclass
class PreprocessedCase:
    """The model input and its geometry.

    Attributes:
        tensor: float32 (D, H, W) = ``plans.matrix_zyx``, >= 0, windowed HU z-scored inside the brain.
        grid: the model grid (geometry only; uint8 zeros), LPS origin/spacing/direction.
        brain_mask: uint8 (D, H, W), the brain mask on the model grid.
        centre_lps: physical centre of the field of view (LPS, mm).
        brain_mean_hu: mean of the windowed HU inside the brain on the model grid.
        brain_sd_hu: standard deviation (population, ddof=0) of the same values.
    """

    tensor: np.ndarray
    grid: sitk.Image
    brain_mask: np.ndarray
    centre_lps: tuple[float, float, float]
    brain_mean_hu: float
    brain_sd_hu: float


def model_grid(
    centre_lps: tuple[float, float, float], plans: Plans, direction: tuple[float, ...] | None = None
) -> sitk.Image:
    """An empty uint8 image with the model grid's geometry, centred on ``centre_lps`` (LPS, mm).

    ``direction`` is a row-major 3x3 direction-cosine matrix (columns = x, y, z axes in LPS); identity when None.
    """
    d, h, w = plans.matrix_zyx
    sz, sy, sx = plans.spacing_zyx
    grid = sitk.Image([w, h, d], sitk.sitkUInt8)
    grid.SetSpacing((sx, sy, sz))
    dmat = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    grid.SetDirection(tuple(dmat.ravel()))
    half_extent = (np.array([w, h, d], dtype=float) - 1.0) / 2.0 * np.array([sx, sy, sz])
    origin = np.asarray(centre_lps, dtype=float) - dmat @ half_extent
    grid.SetOrigin(tuple(float(v) for v in origin))
    return grid


def _fov_centre(image: sitk.Image, mask: sitk.Image, plans: Plans) -> tuple[float, float, float]:
    if plans.centre == "brain_centroid":
        # centroid of the mask voxels in continuous index space (from the three marginal projections, which is
        # exact and avoids listing the voxels), mapped to LPS; equals LabelShapeStatistics' physical centroid
        arr = sitk.GetArrayViewFromImage(mask)
        total = float(np.count_nonzero(arr))
        index_xyz = []
        for axes in ((0, 1), (0, 2), (1, 2)):  # marginals along x, y, z
            marginal = np.count_nonzero(arr, axis=axes)
            index_xyz.append(float(np.dot(np.arange(marginal.size), marginal)) / total)
        return tuple(float(v) for v in mask.TransformContinuousIndexToPhysicalPoint(index_xyz))  # type: ignore[return-value]
    centre_index = [(n - 1) / 2.0 for n in image.GetSize()]
    return tuple(float(v) for v in image.TransformContinuousIndexToPhysicalPoint(centre_index))  # type: ignore[return-value]


def _crop_to_grid(image: sitk.Image, grid: sitk.Image, margin: int) -> sitk.Image:
    """The part of ``image`` that covers ``grid`` (plus ``margin`` voxels): a copy with its geometry."""
    size = np.array(grid.GetSize())
    corners = [
        image.TransformPhysicalPointToContinuousIndex(
            grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        )
        for corner in itertools.product(*[(-0.5, n - 0.5) for n in size])
    ]
    corners_arr = np.asarray(corners)
    lo = np.floor(corners_arr.min(axis=0)).astype(int) - margin
    hi = np.ceil(corners_arr.max(axis=0)).astype(int) + margin + 1
    full = np.array(image.GetSize())
    lo = np.clip(lo, 0, full)
    hi = np.clip(hi, 0, full)
    if np.any(hi <= lo):
        raise IngestionError(
            RefusalCode.BRAIN_NOT_FOUND,
            "The field of view centred on the brain does not overlap the image.",
        )
    if np.all(lo == 0) and np.all(hi == full):
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def preprocess(image: sitk.Image, plans: Plans | None = None) -> PreprocessedCase:
    """Turn an HU volume into the model's input tensor, exactly as the plans say (see the module docstring).

    Args:
        image: HU volume (any pixel type, any LPS geometry; float32 avoids a copy).
        plans: preprocessing settings; the paper's defaults when None.

    Raises:
        IngestionError: ``brain_not_found`` when skull stripping finds no brain, or no brain falls in the
            field of view.
    """
    plans = plans or Plans()
    hu = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    mask = brain_mask(hu, plans.skull_strip)
    centre = _fov_centre(hu, mask, plans)
    direction = hu.GetDirection() if plans.orientation == "source" else None
    grid = model_grid(centre, plans, direction)

    hu_crop = _crop_to_grid(hu, grid, _CROP_MARGIN_VOXELS)
    mask_crop = _crop_to_grid(mask, grid, _CROP_MARGIN_VOXELS) if hu_crop is not hu else mask
    stripped = np.where(
        sitk.GetArrayViewFromImage(mask_crop) > 0,
        sitk.GetArrayViewFromImage(hu_crop),
        np.float32(plans.background_hu),
    ).astype(np.float32, copy=False)
    if plans.interpolation == "bspline" and same_direction(hu_crop, grid):
        tensor = separable_bspline_resample(hu_crop, stripped, grid, plans.background_hu)
    else:
        stripped_image = sitk.GetImageFromArray(stripped)
        stripped_image.CopyInformation(hu_crop)
        resampled = sitk.Resample(
            stripped_image,
            grid,
            sitk.Transform(),
            _INTERPOLATORS[plans.interpolation],
            plans.background_hu,
            sitk.sitkFloat32,
        )
        tensor = sitk.GetArrayFromImage(resampled)  # (z, y, x) float32, owned copy
    grid_mask = sitk.Resample(mask_crop, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    brain = sitk.GetArrayFromImage(grid_mask).astype(bool)
    lo, hi = plans.window_hu
    np.clip(tensor, lo, hi, out=tensor)
    n_brain = int(np.count_nonzero(brain))
    if n_brain == 0:
        raise IngestionError(RefusalCode.BRAIN_NOT_FOUND, "No brain lies inside the model's field of view.")
    values = tensor[brain]
    mean = float(values.mean(dtype=np.float64))
    sd = float(values.std(dtype=np.float64))
    if not np.isfinite(sd) or sd <= 1e-6:
        raise IngestionError(
            RefusalCode.BRAIN_NOT_FOUND,
            f"The brain region has no contrast within the {lo:g} to {hi:g} HU window; it cannot be normalised.",
            {"brain_mean_hu": round(mean, 2)},
        )
    tensor -= np.float32(mean)
    tensor /= np.float32(sd)
    if plans.normalisation == "brain_zscore_clip_negative":
        np.maximum(tensor, 0.0, out=tensor)
    return PreprocessedCase(
        tensor=tensor,
        grid=grid,
        brain_mask=brain.astype(np.uint8),
        centre_lps=centre,
        brain_mean_hu=mean,
        brain_sd_hu=sd,
    )


def resample_label_to_model_grid(label: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Map a binary label (e.g. a haematoma mask on the original image grid) onto the model grid.

    The label (any value > 0 is foreground) is resampled as a 0/1 float with **linear** interpolation and
    thresholded at >= 0.5: the boundary is then the linearly interpolated half-way surface, which preserves
    volume better than nearest neighbour when the model grid is not a subset of the source grid, and it is
    the same rule that :func:`app.preprocessing.inverse.probabilities_to_reference` uses on the way back.

    Returns:
        uint8 (D, H, W) on ``grid``.
    """
    binary = sitk.Cast(sitk.Greater(label, 0), sitk.sitkFloat32)
    resampled = sitk.Resample(binary, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return (sitk.GetArrayViewFromImage(resampled) >= 0.5).astype(np.uint8)
