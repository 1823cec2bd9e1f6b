"""Partial-volume refinement of the haematoma boundary on the analysis grid.

The network segments on the model grid (about 1.2 mm in-plane on the CPU plans); its probabilities, interpolated
back to the analysis grid (the series' own, typically 0.4-0.5 mm in-plane), give a boundary that is smooth but up
to a model voxel off. Blood (50-90 HU) is denser than the brain around it (20-40 HU), and a voxel that is half clot
and half brain reads the mean of the two, so the clot's boundary on the fine grid is where the image crosses the
midpoint between the local clot density and the local surrounding density - the same 50 % partial-volume rule
that manual planimetry follows. :func:`refine_mask` applies that rule in a band around the network's boundary:

1. ``mask = probability >= seed_threshold`` (the plans' mask threshold by default); ``core`` = the mask eroded by ``band_mm`` in-plane (kept as is, so that
   hypodense regions inside the clot stay in it); ``band`` = the mask dilated by ``band_mm`` minus the core.
2. Local clot density: the normalised Gaussian average (``sigma_mm``, in-plane) of the core's voxels that are not
   more than 15 HU below the core median (hypodense foci do not lower the reference). Local surrounding density:
   the same average over a ring ``band_mm`` wide outside the band, restricted to ``[15, 60]`` HU (brain and
   oedema; CSF, bone and calcification do not count); 30 HU where there is no ring.
3. A band voxel belongs to the clot when its in-plane 3x3 mean is at least the midpoint of the two densities,
   below ``max_hu`` (calcification and bone are not blood) and its network probability at least
   ``min_band_probability`` (blood next to the clot that the network rejects, e.g. in a ventricle, stays out).
4. Only components that touch the core are kept; holes are filled slice by slice.
5.-6a. Intraventricular blood (which the haematoma volume excludes, as the paper's planimetry does) leaves the
   mask (:mod:`app.model.ventricular_blood`): components that layer in a ventricle (step 5, ``drop_ventricular``);
   CSF regions inside the mask (step 6a, ``drop_enclosed_csf``), then the columns of blood with a fluid level
   against CSF (step 6, ``drop_layered``) and, with ``drop_layered_lobes``, the lobes of the mask that hold that
   layered blood and have its density (the rest of the ventricle's blood where the clot lies in front of it).
7. (Applied before step 6, with ``complete_fluid_level``.) A haematoma with a fluid level keeps its serum part in
   front of the level, less dense than the brain, which the network and the partial-volume rule leave out
   (:mod:`app.model.fluid_level_completion`).
8. A parenchymal haematoma lies in one hemisphere (the falx bounds it). With ``drop_contralateral`` and the
   brain's centroid known, a connected component other than the largest whose centroid lies across the midline
   from the largest one's (LPS x on the other side of the brain centroid's, by at least
   ``contralateral_min_mm``) is left out: blood in the opposite ventricle, or a second, remote bleed, which the
   haematoma volume does not count either (:func:`drop_contralateral`, on the whole analysis grid).

All distances are in mm on the analysis grid (z, y, x); work is done in the mask's bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from app.model.fluid_level_completion import SERUM_REACH_MM, serum_part
from app.model.ventricular_blood import (
    csf_smoothed,
    drop_ventricular_components,
    enclosed_csf,
    layered_blood,
    layered_lobes,
)

IN_PLANE = np.ones((1, 3, 3), dtype=bool)
SURROUNDING_HU = (15.0, 60.0)
DEFAULT_SURROUNDING_HU = 30.0
CORE_HYPODENSE_HU = 15.0


class BoundaryRefinement(BaseModel):
    """Settings of :func:`refine_mask` (stored with the weights; ``enabled=False`` keeps the thresholded mask)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = False
    band_mm: float = Field(2.5, gt=0.0, le=10.0, description="half-width of the band around the boundary, mm")
    sigma_mm: float = Field(4.0, gt=0.0, le=20.0, description="Gaussian sigma of the local densities, mm")
    max_hu: float = Field(100.0, description="band voxels at or above this HU are not blood (calcification)")
    min_band_probability: float = Field(0.0, ge=0.0, lt=1.0,
                                        description="band voxels below this network probability stay out")
    seed_threshold: float | None = Field(None, gt=0.0, lt=1.0,
                                         description="network probability that seeds the refinement (None: the "
                                         "plans' mask threshold)")
    drop_ventricular: bool = Field(True, description="drop components that layer in a ventricle (step 5)")
    probe_mm: float = Field(4.0, gt=0.0, le=20.0)
    ventricle_anterior_csf: float = Field(0.2, ge=0.0, le=1.0)
    ventricle_posterior_csf: float = Field(0.05, ge=0.0, le=1.0)
    drop_layered: bool = Field(True, description="drop intraventricular blood with a fluid level (step 6)")
    layer_probe_mm: float = Field(2.0, gt=0.0, le=10.0)
    layer_gap_mm: float = Field(1.0, ge=0.0, le=5.0)
    layer_csf_fraction: float = Field(0.6, gt=0.0, le=1.0)
    layer_min_width_mm: float = Field(3.0, gt=0.0)
    layer_max_sd_mm: float = Field(0.6, gt=0.0)
    layer_csf_max_hu: float = Field(20.0, gt=0.0, le=40.0, description="CSF upper bound of step 6, HU")
    layer_front_min_hu: float | None = Field(
        None, gt=0.0, le=40.0, description="step 6 measures a column's front at its first voxel at or above this "
        "HU (None: the mask's first voxel), so that CSF the mask took in front of the level does not hide it, HU")
    drop_enclosed_csf: bool = Field(False, description="CSF inside the mask leaves it before step 6 (step 6a)")
    enclosed_csf_max_hu: float = Field(12.0, gt=0.0, le=20.0, description="CSF upper bound of step 6a, HU")
    enclosed_csf_min_mm2: float = Field(6.0, ge=0.0, description="smallest CSF region step 6a removes, mm2")
    complete_fluid_level: bool = Field(False, description="keep the serum part of a fluid level (step 7)")
    serum_hu: tuple[float, float] = (12.0, 27.0)
    serum_min_share: float = Field(0.1, gt=0.0)
    serum_max_width_ratio: float = Field(1.15, gt=0.0)
    level_min_share: float = Field(0.25, gt=0.0, le=1.0)
    level_max_slope: float = Field(0.5, ge=0.0)
    level_max_sd_mm: float = Field(2.5, gt=0.0)
    serum_max_ratio: float = Field(3.0, gt=0.0)
    union_min_solidity: float = Field(0.85, gt=0.0, le=1.0)
    serum_within_width: bool = Field(False, description="look for serum only over the mask's own columns (step 7)")
    drop_layered_lobes: bool = Field(False, description="drop the lobes that hold the layered blood (with step 6)")
    lobe_dynamic_mm: float = Field(1.0, gt=0.0, le=20.0,
                                   description="a lobe's peak stands this far above its saddle with a deeper one, mm")
    lobe_step_mm: float = Field(0.5, gt=0.0, le=5.0, description="level step of the lobes' watershed, mm")
    lobe_min_peak_mm: float = Field(2.0, gt=0.0, le=20.0, description="a lobe's seed lies this deep in the mask, mm")
    lobe_layer_share: float = Field(0.15, gt=0.0, le=1.0, description="share of a lobe that is layered blood")
    lobe_hu_tolerance: float = Field(5.0, ge=0.0, le=50.0,
                                     description="a dropped lobe's median within this of the layered blood's, HU")
    lobe_min_contrast_hu: float = Field(0.0, ge=0.0, le=50.0, description="the layered blood's median differs "
                                        "from the thickest lobe's by at least this, or no lobe is dropped, HU")
    lobe_max_share: float = Field(0.6, gt=0.0, le=1.0, description="the dropped lobes take at most this of the mask")
    drop_contralateral: bool = Field(False, description="drop components across the midline (step 8)")
    contralateral_min_mm: float = Field(3.0, ge=0.0, le=30.0)
    fitted_on: str | None = Field(None, description="free text: the data these values were chosen on")


def _box(mask: np.ndarray, margin_zyx: Sequence[int]) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - np.asarray(margin_zyx), 0)
    hi = np.minimum(idx.max(0) + np.asarray(margin_zyx) + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _local_mean(values: np.ndarray, where: np.ndarray, sigma_px: tuple[float, float, float],
                fallback: float) -> np.ndarray:
    """Gaussian-weighted mean of ``values`` over ``where`` at every voxel (``fallback`` far from ``where``)."""
    num = ndimage.gaussian_filter(np.where(where, values, 0.0).astype(np.float32), sigma_px)
    den = ndimage.gaussian_filter(where.astype(np.float32), sigma_px)
    return np.where(den > 1e-3, num / np.maximum(den, 1e-6), np.float32(fallback)).astype(np.float32)


def refine_mask(hu_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_zyx: Sequence[float],
                settings: BoundaryRefinement, probability_zyx: np.ndarray | None = None) -> np.ndarray:
    """The refined mask (bool, z-y-x, same shape) of the module docstring. ``hu_zyx`` in HU and ``mask_zyx``
    (the thresholded network mask) on the analysis grid; ``spacing_zyx`` in mm. An empty mask, or disabled
    settings, return the mask unchanged."""
    mask = np.asarray(mask_zyx) > 0
    if not settings.enabled or not mask.any():
        return mask
    _, dy, dx = (float(s) for s in spacing_zyx)
    steps = max(1, int(round(settings.band_mm / min(dy, dx))))
    sigma_px = (0.0, settings.sigma_mm / dy, settings.sigma_mm / dx)
    margin_y = 3 * steps + int(3 * sigma_px[1]) + 2
    if settings.complete_fluid_level:  # room for the serum part in front of the network's mask
        margin_y = max(margin_y, int(round(SERUM_REACH_MM / dy)))
    box = _box(mask, (1, margin_y, 3 * steps + int(3 * sigma_px[2]) + 2))
    m = mask[box]
    hu = np.asarray(hu_zyx[box], dtype=np.float32)

    core = ndimage.binary_erosion(m, IN_PLANE, iterations=steps)
    if int(core.sum()) < 10:
        core = m
    outer = ndimage.binary_dilation(m, IN_PLANE, iterations=steps)
    ring = ndimage.binary_dilation(outer, IN_PLANE, iterations=steps) & ~outer
    ring &= (hu > SURROUNDING_HU[0]) & (hu < SURROUNDING_HU[1])
    core_median = float(np.median(hu[core]))
    dense_core = core & (hu > core_median - CORE_HYPODENSE_HU)
    clot = _local_mean(hu, dense_core, sigma_px, core_median)
    surrounding = _local_mean(hu, ring, sigma_px, DEFAULT_SURROUNDING_HU) if ring.any() else \
        np.full_like(hu, DEFAULT_SURROUNDING_HU)
    smoothed = ndimage.uniform_filter(hu, size=(1, 3, 3))
    band = outer & ~core
    accept = band & (smoothed >= 0.5 * (clot + surrounding)) & (smoothed < settings.max_hu)
    if probability_zyx is not None and settings.min_band_probability > 0:
        accept &= np.asarray(probability_zyx[box]) >= settings.min_band_probability
    refined = core | accept

    labels, _ = ndimage.label(refined, np.ones((3, 3, 3), dtype=bool))
    keep = np.unique(labels[core & refined])
    refined = np.isin(labels, keep[keep > 0])
    refined = np.stack([ndimage.binary_fill_holes(s) for s in refined])
    if settings.drop_ventricular:
        refined = drop_ventricular_components(refined, hu, max(1, int(round(settings.probe_mm / dy))), settings)
    if settings.complete_fluid_level and refined.any():  # before step 6: serum in front is not CSF
        refined |= serum_part(refined, hu, (dy, dx), settings)
        refined = np.stack([ndimage.binary_fill_holes(s) for s in refined])
    if settings.drop_enclosed_csf or settings.drop_layered:
        smoothed = csf_smoothed(hu, (dy, dx))
        if settings.drop_enclosed_csf and refined.any():
            refined &= ~enclosed_csf(refined, smoothed, (dy, dx), settings)
        if settings.drop_layered:
            layered = layered_blood(refined, smoothed, (dy, dx), settings)
            if settings.drop_layered_lobes:
                refined &= ~layered_lobes(refined, layered, hu, (float(spacing_zyx[0]), dy, dx), settings)
            refined &= ~layered
    out = np.zeros_like(mask)
    out[box] = refined
    return out


def drop_contralateral(mask_zyx: np.ndarray, geometry: sitk.Image, brain_centroid_lps: Sequence[float] | None,
                       settings: BoundaryRefinement) -> np.ndarray:
    """``mask_zyx`` (z-y-x on ``geometry``'s grid) without the components across the midline from the largest
    (module docstring, step 8); unchanged when the step is off, the centroid unknown or one component."""
    mask = np.asarray(mask_zyx) > 0
    if not (settings.enabled and settings.drop_contralateral) or brain_centroid_lps is None or not mask.any():
        return mask
    box = _box(mask, (1, 1, 1))
    labels, n = ndimage.label(mask[box], np.ones((3, 3, 3), dtype=bool))
    if n < 2:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    zyx = np.asarray(ndimage.center_of_mass(labels > 0, labels, range(1, n + 1))) + [b.start for b in box]
    side = [float(geometry.TransformContinuousIndexToPhysicalPoint([float(c[2]), float(c[1]), float(c[0])])[0])
            - float(brain_centroid_lps[0]) for c in zyx]
    largest = int(np.argmax(sizes))
    drop = [i + 1 for i in range(n) if i != largest and side[i] * side[largest] < 0
            and abs(side[i]) >= settings.contralateral_min_mm]
    if not drop:
        return mask
    out = mask.copy()
    out[box] &= ~np.isin(labels, drop)
    return out
