"""Skull stripping of a non-contrast head CT with Otsu's method.

The supplement of Zhong et al. (2021) says only "skull stripped by using Otsu's method". This module makes
that concrete and reproducible:

1. **Working copy.** The volume is block-averaged in-plane to about 1 mm (SimpleITK ``BinShrink``); choosing
   the brain does not need sub-millimetre detail, and the morphology is several times cheaper.
2. **Bone threshold (Otsu).** HU are clipped to ``settings.otsu_range_hu`` (default -100..1000 HU, so that the
   air peak and metal do not dominate) and two Otsu thresholds are computed (SimpleITK
   ``OtsuMultipleThresholds``; three classes: air/fat, soft tissue, bone). The upper threshold separates soft
   tissue from bone; it is never allowed below the upper bound of ``settings.soft_tissue_hu``, so a dense
   haematoma (50-90 HU) is never classed as bone.
3. **Skull hull.** The bone mask is closed in-plane (2 mm) to bridge sutures and thin bone, and its holes are
   filled slice by slice (axial). Voxels of the filled hull that are not bone are the intracranial cavity.
4. **Brain candidate.** Soft tissue (``settings.soft_tissue_hu``, default -15..100 HU: CSF, grey and white
   matter, acute blood) is eroded by a ball of ``settings.erosion_radius_mm`` (default 3 mm) to cut thin
   bridges through the foramina and orbits, split into 6-connected components, and the largest component
   lying mostly (>= 50 %) inside the skull hull is taken as the brain, then dilated back by the same ball within
   the soft-tissue mask.
5. **Holes and smoothing.** A 1-voxel in-plane opening removes spurs; the largest component is kept; holes are
   filled in 3D and in every axial slice, so the ventricles, haematomas and calcifications (choroid plexus,
   pineal gland: > 100 HU) stay inside the mask.
6. **Full resolution.** The interior of the working-resolution region (eroded by one working voxel) is brain
   as a whole, filled holes included; in a rim of one working voxel either side of its boundary the
   full-resolution soft-tissue threshold decides, so the mask edge follows the image at full resolution.
   The rim cannot reach the scalp: the skull lies in between.

A volume in which no such component of at least ``settings.min_brain_volume_ml`` exists is refused with
:attr:`~app.errors.RefusalCode.BRAIN_NOT_FOUND` (a body CT, a head CT without the skull in the field of view,
an empty series). Binary morphology, labelling and hole filling work on the (z, y, x) arrays
(:mod:`app.preprocessing.morphology`); the mask keeps the input's geometry (origin, spacing, direction: LPS, mm).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from app.errors import IngestionError, RefusalCode
from app.preprocessing.morphology import (
    IN_PLANE_CROSS_STEP,
    ball_steps,
    dilate,
    erode,
    fill_holes,
    largest_component,
    structure_of,
)
from app.preprocessing.plans import SkullStripSettings

__all__ = ["brain_mask", "structure_of"]

#: in-plane spacing (mm) of the working copy used for the component analysis
_WORK_SPACING_MM = 1.0
#: closing radius (mm, in-plane) applied to the bone mask before the skull hull is filled
_BONE_CLOSING_MM = 2.0
#: minimum fraction of a component's voxels inside the skull hull for it to count as intracranial
_MIN_INSIDE_SKULL = 0.5


def _upsample_in_plane(zones: np.ndarray, factors_yx: tuple[int, int], size_yx: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour inverse of ``BinShrink``: full-resolution voxel ``i`` takes working voxel ``i // f``;
    the trailing remainder that BinShrink drops takes the last working voxel."""
    out = zones
    for axis, f, size in ((1, factors_yx[0], size_yx[0]), (2, factors_yx[1], size_yx[1])):
        out = np.repeat(out, f, axis=axis)
        if out.shape[axis] < size:
            pad = [(0, 0)] * 3
            pad[axis] = (0, size - out.shape[axis])
            out = np.pad(out, pad, mode="edge")
        elif out.shape[axis] > size:
            out = out[tuple(slice(0, size) if a == axis else slice(None) for a in range(3))]
    return out


def _bone_threshold(image: sitk.Image, settings: SkullStripSettings) -> float:
    """Upper Otsu threshold (HU) of the clipped image: the soft-tissue/bone boundary."""
    lo, hi = settings.otsu_range_hu
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(2)
    otsu.SetNumberOfHistogramBins(256)
    otsu.Execute(sitk.Clamp(image, sitk.sitkFloat32, lo, hi))
    return float(max(max(otsu.GetThresholds()), settings.soft_tissue_hu[1]))


def _not_found(message: str, details: dict | None = None) -> IngestionError:
    return IngestionError(
        RefusalCode.BRAIN_NOT_FOUND,
        f"{message} Is this a non-contrast head CT covering the brain?",
        details or {},
    )


def _select_brain(
    tissue: np.ndarray,
    hull: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    settings: SkullStripSettings,
) -> np.ndarray:
    """Largest eroded soft-tissue component lying mostly inside the skull hull, dilated back within tissue."""
    ball = ball_steps(settings.erosion_radius_mm, spacing_zyx)
    eroded = erode(tissue, ball)
    labels, n = ndimage.label(eroded)
    if n == 0:
        raise _not_found("Skull stripping found no soft tissue.")
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    inside = np.bincount(labels[hull], minlength=n + 1)
    sizes[0] = 0
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    # erosion shrinks the brain: require half the plausible minimum volume before dilating back
    min_voxels = 0.5 * settings.min_brain_volume_ml / voxel_ml
    for label in np.argsort(sizes)[::-1]:
        if sizes[label] < min_voxels:
            break
        if inside[label] >= _MIN_INSIDE_SKULL * sizes[label]:
            component = labels == label
            return dilate(component, ball) & tissue
    raise _not_found(
        "No brain could be found inside a skull: skull stripping found no soft-tissue region of plausible size "
        "enclosed by bone.",
        {"min_brain_volume_ml": settings.min_brain_volume_ml},
    )


def brain_mask(image: sitk.Image, settings: SkullStripSettings | None = None) -> sitk.Image:
    """Brain mask of a head CT by Otsu-based skull stripping (see the module docstring for the steps).

    Args:
        image: HU volume (any pixel type, any LPS geometry), axial slices along the image's third axis.
        settings: skull-stripping parameters (``Plans.skull_strip``); :class:`SkullStripSettings` when None.

    Returns:
        sitk ``UInt8`` image on ``image``'s grid: 1 = brain (including ventricles, haematoma and intracranial
        calcifications), 0 = everything else (air, scalp, skull, face, neck).

    Raises:
        IngestionError: ``brain_not_found`` when no plausible brain is enclosed by the skull.
    """
    settings = settings or SkullStripSettings()
    if image.GetDimension() != 3:
        raise ValueError("brain_mask expects a 3D image")
    hu = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    sx, sy, _ = hu.GetSpacing()
    fx, fy = max(1, int(round(_WORK_SPACING_MM / sx))), max(1, int(round(_WORK_SPACING_MM / sy)))
    small = sitk.BinShrink(hu, [fx, fy, 1]) if fx * fy > 1 else hu
    wx, wy, wz = small.GetSpacing()
    spacing_zyx = (wz, wy, wx)

    bone_hu = _bone_threshold(small, settings)
    lo, hi = settings.soft_tissue_hu[0], min(settings.soft_tissue_hu[1], bone_hu)
    arr = sitk.GetArrayViewFromImage(small)
    # work inside the head's in-plane bounding box (anything denser than fat), with an air margin so that the
    # array border stays "outside" for hole filling: typically halves the voxels of a 250 mm field of view
    head = arr > settings.otsu_range_hu[0]
    if not head.any():
        raise _not_found("The image contains no tissue.")
    margin = 2 + len(ball_steps(settings.erosion_radius_mm, spacing_zyx))
    box = tuple(
        slice(max(0, int(idx[0]) - margin), min(n, int(idx[-1]) + margin + 1))
        for idx, n in (
            (np.flatnonzero(head.any(axis=(0, 2))), arr.shape[1]),
            (np.flatnonzero(head.any(axis=(0, 1))), arr.shape[2]),
        )
    )
    arr_box = arr[:, box[0], box[1]]
    closing = ball_steps(_BONE_CLOSING_MM, spacing_zyx, in_plane_only=True)
    bone = erode(dilate(arr_box >= bone_hu, closing), closing)
    hull = fill_holes(bone, slicewise=True) & ~bone
    tissue = (arr_box >= lo) & (arr_box <= hi)

    region_box = _select_brain(tissue, hull, spacing_zyx, settings)
    region_box = largest_component(dilate(erode(region_box, [IN_PLANE_CROSS_STEP]), [IN_PLANE_CROSS_STEP]))
    region_box = fill_holes(fill_holes(region_box, slicewise=False), slicewise=True)
    region = np.zeros(arr.shape, dtype=bool)
    region[:, box[0], box[1]] = region_box

    if small is hu:
        mask_arr = region
    else:
        interior = erode(region, [IN_PLANE_CROSS_STEP])
        outer = dilate(region, [IN_PLANE_CROSS_STEP])
        zones = outer.astype(np.uint8) + interior  # 2 = interior, 1 = rim, 0 = outside
        size_x, size_y, _ = hu.GetSize()
        zones_full = _upsample_in_plane(zones, (fy, fx), (size_y, size_x))
        mask_arr = zones_full == 2
        rim = np.flatnonzero(zones_full == 1)  # a thin shell: test the full-resolution HU there only
        rim_hu = sitk.GetArrayViewFromImage(hu).ravel()[rim]
        mask_arr.ravel()[rim] = (rim_hu >= lo) & (rim_hu <= hi)

    voxel_ml = float(np.prod(hu.GetSpacing())) / 1000.0
    volume_ml = float(np.count_nonzero(mask_arr)) * voxel_ml
    if volume_ml < settings.min_brain_volume_ml:
        raise _not_found(
            f"Skull stripping found only {volume_ml:.0f} mL of brain (at least "
            f"{settings.min_brain_volume_ml:.0f} mL expected).",
            {"brain_volume_ml": round(volume_ml, 1), "min_brain_volume_ml": settings.min_brain_volume_ml},
        )
    mask = sitk.GetImageFromArray(mask_arr.view(np.uint8))  # bool is one byte of 0/1
    mask.CopyInformation(image)
    return mask
