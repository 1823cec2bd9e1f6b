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
5. Intraventricular blood (which the haematoma volume excludes, as the paper's planimetry does) layers in the
   dependent part of a ventricle: CSF in front of it, none behind it. A connected component other than the
   largest is dropped when, ``probe_mm`` in front of it (anterior, -y in LPS), at least
   ``ventricle_anterior_csf`` of the voxels are CSF (``CSF_HU``) and behind it at most
   ``ventricle_posterior_csf`` are.
6. Blood layering in a ventricle that touches the clot has a fluid level with the CSF: on an axial slice, the
   mask's columns (runs along y) whose anterior end lies against CSF (at least ``layer_csf_fraction`` of the
   ``layer_probe_mm`` in front of it, after a ``layer_gap_mm`` partial-volume gap) and whose anterior ends line up
   on a horizontal line (SD of their y position <= ``layer_max_sd_mm`` over at least ``layer_min_width_mm`` of
   adjacent columns) are intraventricular blood and leave the mask. CSF here is ``(-5, layer_csf_max_hu)`` HU,
   below the serum of a fluid level (12-24 HU), whose dense part must not read as layered blood. With
   ``layer_front_min_hu`` a column's front is its first voxel at or above that HU, so that CSF the network took in
   front of the level does not hide the line.
6a. (Applied before step 6, with ``drop_enclosed_csf``.) A ventricle that the haematoma surrounds is a hole that
   step 4 filled: regions of CSF density (``(-5, enclosed_csf_max_hu)`` HU after a 0.7 mm in-plane Gaussian, at
   least ``enclosed_csf_min_mm2`` on the slice) leave the mask, so that blood layering in that ventricle shows its
   level against the CSF to step 6, and the CSF itself is not counted as blood.
7. (Applied before step 6.) A haematoma with a fluid level keeps its non-dependent serum part, less dense than the brain,
   which the network and the partial-volume rule leave out. On each axial slice, a connected region of serum
   density (``serum_hu``, after a 1 mm in-plane Gaussian and a 1 mm opening) that touches the mask joins it when
   it lies in front of the mask (anterior, smaller y), holds ``serum_min_share`` to ``serum_max_ratio`` of the
   mask's area, is no wider than ``serum_max_width_ratio`` times the mask, is closed (does not reach the edge of
   the ``SERUM_REACH_MM`` search box), meets the mask along a horizontal line (over at least ``level_min_share``
   of the mask's width, slope at most ``level_max_slope``, SD about the line at most ``level_max_sd_mm``) and
   the two together are convex (2D solidity at least ``union_min_solidity``): the outline of a clot split by a
   fluid level. With ``serum_within_width`` the serum is looked for only over the mask's own columns (plus the
   partial-volume gap), so that hypodense white matter or oedema that runs sideways from the serum part does not
   fail the width test for the whole slice. CSF (below ``serum_hu[0]``) is not serum, so the blood-CSF level in
   a ventricle is never extended; a round clot beside hypodense brain fails the width, line or convexity test.

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
from scipy.spatial import ConvexHull, QhullError

IN_PLANE = np.ones((1, 3, 3), dtype=bool)
SURROUNDING_HU = (15.0, 60.0)
DEFAULT_SURROUNDING_HU = 30.0
CORE_HYPODENSE_HU = 15.0
CSF_HU = (-5.0, 16.0)
CSF_MIN_HU = -5.0
SERUM_REACH_MM = 45.0


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


def _csf_share(hu: np.ndarray, where: np.ndarray) -> float:
    n = int(where.sum())
    return float(((hu[where] > CSF_HU[0]) & (hu[where] < CSF_HU[1])).sum()) / n if n else 0.0


def _drop_ventricular(mask: np.ndarray, hu: np.ndarray, shift: int, settings: BoundaryRefinement) -> np.ndarray:
    """``mask`` without the non-largest components that layer in a ventricle (module docstring, step 5)."""
    labels, n = ndimage.label(mask, np.ones((3, 3, 3), dtype=bool))
    if n < 2 or shift >= mask.shape[1]:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    keep = mask.copy()
    for index in range(1, n + 1):
        if index == largest:
            continue
        comp = labels == index
        front = np.zeros_like(comp)
        front[:, :-shift, :] = comp[:, shift:, :]  # the voxels `shift` rows anterior (smaller y) of the component
        behind = np.zeros_like(comp)
        behind[:, shift:, :] = comp[:, :-shift, :]
        front &= ~comp
        behind &= ~comp
        if (_csf_share(hu, front) >= settings.ventricle_anterior_csf
                and _csf_share(hu, behind) <= settings.ventricle_posterior_csf):
            keep &= ~comp
    return keep


def _column_runs(column: np.ndarray) -> list[tuple[int, int]]:
    ys = np.flatnonzero(column)
    if ys.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(ys) > 1)
    return list(zip(np.r_[ys[0], ys[breaks + 1]].tolist(), np.r_[ys[breaks], ys[-1]].tolist(), strict=True))


def _front_groups(mask2d: np.ndarray, against: np.ndarray, probe: int, gap: int, fraction: float,
                  dense: np.ndarray | None = None) -> list[list[tuple[int, int, int, int]]]:
    """Runs (x, first y, last y, front y) of one slice's mask columns whose front lies against ``against``
    (at least ``fraction`` of ``probe`` voxels after a ``gap``), grouped into adjacent columns with close fronts.
    The front is the run's first voxel, or with ``dense`` its first ``dense`` voxel."""
    runs: list[tuple[int, int, int, int]] = []
    for x in np.flatnonzero(mask2d.any(axis=0)):
        for y0, y1 in _column_runs(mask2d[:, x]):
            front = y0
            if dense is not None:
                hits = np.flatnonzero(dense[y0:y1 + 1, x])
                if hits.size == 0:
                    continue
                front = y0 + int(hits[0])
            a, b = max(0, front - gap - probe), max(0, front - gap)
            if b > a and against[a:b, x].mean() >= fraction:
                runs.append((int(x), y0, y1, front))
    groups: list[list[tuple[int, int, int, int]]] = []
    for run in runs:
        last = groups[-1][-1] if groups else None
        if last is not None and run[0] - last[0] <= 1 and abs(run[3] - last[3]) <= 2:
            groups[-1].append(run)
        else:
            groups.append([run])
    return groups


def _csf_smoothed(hu: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """The 0.7 mm in-plane Gaussian of ``hu`` on which steps 6 and 6a read CSF."""
    dy, dx = spacing_yx
    return ndimage.gaussian_filter(hu, (0.0, 0.7 / dy, 0.7 / dx))


def _layered_blood(mask: np.ndarray, smoothed: np.ndarray, spacing_yx: tuple[float, float],
                   settings: BoundaryRefinement) -> np.ndarray:
    """The mask's voxels of intraventricular blood with a fluid level against CSF (module docstring, step 6)."""
    dy, dx = spacing_yx
    csf = (smoothed > CSF_MIN_HU) & (smoothed < settings.layer_csf_max_hu)
    dense = None if settings.layer_front_min_hu is None else smoothed >= settings.layer_front_min_hu
    probe = max(1, int(round(settings.layer_probe_mm / dy)))
    gap = int(round(settings.layer_gap_mm / dy))
    min_columns = max(2, int(round(settings.layer_min_width_mm / dx)))
    out = np.zeros_like(mask)
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        for group in _front_groups(mask[z], csf[z], probe, gap, settings.layer_csf_fraction,
                                   None if dense is None else dense[z]):
            fronts = np.array([r[3] for r in group], dtype=np.float64) * dy
            if len(group) >= min_columns and fronts.std() <= settings.layer_max_sd_mm:
                for x, y0, y1, _ in group:
                    out[z, y0:y1 + 1, x] = True
    return out & mask


def _enclosed_csf(mask: np.ndarray, smoothed: np.ndarray, spacing_yx: tuple[float, float],
                  settings: BoundaryRefinement) -> np.ndarray:
    """The mask's voxels in regions of CSF density (module docstring, step 6a), slice by slice."""
    dy, dx = spacing_yx
    csf = mask & (smoothed > CSF_MIN_HU) & (smoothed < settings.enclosed_csf_max_hu)
    min_px = settings.enclosed_csf_min_mm2 / (dy * dx)
    out = np.zeros_like(mask)
    for z in np.flatnonzero(csf.any(axis=(1, 2))):
        labels, n = ndimage.label(csf[z])
        sizes = np.bincount(labels.ravel())
        big = np.flatnonzero(sizes >= min_px)
        out[z] = np.isin(labels, big[big > 0])
    return out


def _solidity_2d(section: np.ndarray) -> float:
    pts = np.argwhere(section).astype(np.float64)
    if len(pts) < 10:
        return 0.0
    corners = np.concatenate([pts + d for d in ((0, 0), (1, 0), (0, 1), (1, 1))])
    try:
        return float(section.sum()) / max(float(ConvexHull(corners).volume), 1e-6)
    except QhullError:
        return 0.0


def _level_contact(section: np.ndarray, comp: np.ndarray, reach: int, dy: float,
                   settings: BoundaryRefinement) -> bool:
    """Whether ``section`` meets ``comp`` along a horizontal line (a fluid level) across most of its width."""
    contact = section & ndimage.binary_dilation(comp, iterations=reach)
    xs = np.flatnonzero(contact.any(axis=0))
    if xs.size < 5:
        return False
    width = np.flatnonzero(section.any(axis=0))
    if xs.size < settings.level_min_share * (width[-1] - width[0] + 1):
        return False
    fronts = np.array([np.flatnonzero(contact[:, x])[0] for x in xs], dtype=np.float64)
    slope, intercept = np.polyfit(xs.astype(np.float64), fronts, 1)
    residual = fronts - (slope * xs + intercept)
    return bool(abs(slope) <= settings.level_max_slope and residual.std() * dy <= settings.level_max_sd_mm)


def _serum_part(mask: np.ndarray, hu: np.ndarray, spacing_yx: tuple[float, float],
                settings: BoundaryRefinement) -> np.ndarray:
    """The serum part in front of a fluid level of the clot (module docstring, step 7), bool like ``mask``."""
    dy, dx = spacing_yx
    smoothed = ndimage.gaussian_filter(hu, (0.0, 1.0 / dy, 1.0 / dx))
    serum = (smoothed >= settings.serum_hu[0]) & (smoothed < settings.serum_hu[1])
    opening = max(1, int(round(1.0 / min(dy, dx))))
    touch = max(1, int(round(settings.layer_gap_mm / min(dy, dx)))) + 1
    out = np.zeros_like(mask)
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        section = mask[z]
        area = float(section.sum())
        if area < 50:
            continue
        candidates = serum[z] & ~section
        if settings.serum_within_width:
            cols = np.flatnonzero(section.any(axis=0))
            candidates[:, :max(cols[0] - touch, 0)] = False
            candidates[:, cols[-1] + touch + 1:] = False
        candidates = ndimage.binary_opening(candidates, iterations=opening)
        near = ndimage.binary_dilation(section, iterations=touch)
        labels, n = ndimage.label(candidates)
        if n == 0:
            continue
        centre_y = float(np.argwhere(section)[:, 0].mean())
        for index in np.unique(labels[near & candidates]):
            comp = labels == index
            size = float(comp.sum())
            if not (settings.serum_min_share * area <= size <= settings.serum_max_ratio * area):
                continue
            rows, cols = np.nonzero(comp)
            if float(rows.mean()) >= centre_y:  # not in front (anterior, smaller y)
                continue
            if rows.min() == 0 or cols.min() == 0 or cols.max() == comp.shape[1] - 1:  # open to the box edge
                continue
            if np.ptp(cols) > settings.serum_max_width_ratio * max(float(np.ptp(np.nonzero(section)[1])), 1.0):
                continue
            if not _level_contact(section, comp, touch + 1, dy, settings):
                continue
            union = ndimage.binary_fill_holes(ndimage.binary_closing(section | comp, iterations=touch))
            if _solidity_2d(union) >= settings.union_min_solidity:
                out[z] |= union & ~section
    return out


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
        refined = _drop_ventricular(refined, hu, max(1, int(round(settings.probe_mm / dy))), settings)
    if settings.complete_fluid_level and refined.any():  # before step 6: serum in front is not CSF
        refined |= _serum_part(refined, hu, (dy, dx), settings)
        refined = np.stack([ndimage.binary_fill_holes(s) for s in refined])
    if settings.drop_enclosed_csf or settings.drop_layered:
        smoothed = _csf_smoothed(hu, (dy, dx))
        if settings.drop_enclosed_csf and refined.any():
            refined &= ~_enclosed_csf(refined, smoothed, (dy, dx), settings)
        if settings.drop_layered:
            refined &= ~_layered_blood(refined, smoothed, (dy, dx), settings)
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
