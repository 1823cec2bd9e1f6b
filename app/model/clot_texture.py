"""Measurements of the clot's dark regions, texture, brain-density parts and shape that the learned marker reader
(:mod:`app.model.marker_reader`) combines into the seven NCCT markers.

Each measurement reads one aspect of the supplement's marker definitions from the HU image (z, y, x; mm) inside
the segmented haematoma, in-plane (axial slices) where radiologists read them. ``clot`` = the mask with holes
filled slice by slice; ``depth`` = the in-plane distance (mm) of a clot voxel from the clot's margin; ``S_s`` =
the HU averaged over the clot only by an in-plane Gaussian of ``s`` mm (brain outside does not count);
``median`` = the median HU of the clot deeper than ``core_mm``; ``envelope`` = the clot united with the network's
haematoma probability >= ``envelope_probability`` and filled (it still holds the brain-density and low-density
parts of the clot that the density-based boundary leaves out).

Dark regions (``darkness = median - S_blob_mm`` on the clot deeper than ``core_mm``; regions = connected parts
darker than ``region_hu``):

* ``dark_peak_hu``: the largest darkness (HU); ``dark_peak_ml``: the volume of the region holding it (mL);
  ``dark_peak_depth_mm``: that voxel's depth (mm; an encapsulated focus lies deep);
  ``dark_peak_offset``: its distance from the clot centroid over the clot's equivalent-sphere radius (1);
  ``dark_peak_min_hu``: the lowest ``S_blob_mm`` in that region (HU: 30-45 is brain density);
* ``dark_regions``: regions of at least ``min_region_ml``; ``second_dark_hu``: the second region's peak (HU);
* ``mottle_sd_hu``: SD of ``S_detail_mm - S_context_mm`` over the deep clot (HU; heterogeneous density);
* ``brain_density_fraction``: the share of the deep clot with ``S_detail_mm`` in ``brain_hu`` (1);
* ``envelope_brain_ml`` / ``envelope_brain_fraction``: the largest connected part of the envelope outside the
  clot with ``S_detail_mm`` in ``brain_hu`` (mL; and over the clot volume): brain-density parts of the clot
  (a swirl reaching the margin);
* ``envelope_split_hu`` / ``envelope_split_straightness``: the envelope split at its Otsu threshold: the difference
  of the parts' median HU and the accuracy of the best straight line between them in-plane (blend, fluid level);
* ``ellipsoid_mismatch``: the clot's symmetric difference with the ellipsoid of the same second moments, over the
  clot volume (1; lobules and an irregular margin);
* ``slice_solidity``: the area of the clot's largest axial section over the area of its convex hull (1);
  ``radial_cv``: the coefficient of variation of that section's margin distance from its centroid (1).

Noise: ``surround_noise_hu``, the scan's noise measure in the brain around the clot
(:func:`app.model.scan_noise.surround_noise_hu`, HU), against which the texture measurements are read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from app.model.fluid_level_completion import solidity_2d
from app.model.mask_refinement import _local_mean
from app.model.ncct_markers import _fill, _otsu, _straight_split
from app.model.scan_noise import NOISE_UNITS, surround_noise_hu

TEXTURE_UNITS: dict[str, str] = {
    "dark_peak_hu": "HU", "dark_peak_ml": "mL", "dark_peak_depth_mm": "mm", "dark_peak_offset": "1",
    "dark_peak_min_hu": "HU", "dark_regions": "count", "second_dark_hu": "HU", "mottle_sd_hu": "HU",
    "brain_density_fraction": "1", "envelope_brain_ml": "mL", "envelope_brain_fraction": "1",
    "envelope_split_hu": "HU", "envelope_split_straightness": "1", "ellipsoid_mismatch": "1",
    "slice_solidity": "1", "radial_cv": "1", **NOISE_UNITS,
}


class TextureGeometry(BaseModel):
    """Scales and HU ranges of the measurements (module docstring). HU, mm, mL."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    core_mm: float = Field(1.5, ge=0.0)
    blob_mm: float = Field(2.0, gt=0.0)
    detail_mm: float = Field(1.0, gt=0.0)
    context_mm: float = Field(4.0, gt=0.0)
    region_hu: float = Field(6.0, gt=0.0)
    min_region_ml: float = Field(0.02, ge=0.0)
    brain_hu: tuple[float, float] = (22.0, 46.0)
    envelope_probability: float = Field(0.3, gt=0.0, le=1.0)


def _clot_average(hu: np.ndarray, clot: np.ndarray, sigma_mm: float, spacing_yx: tuple[float, float]) -> np.ndarray:
    return _local_mean(hu, clot, (0.0, sigma_mm / spacing_yx[0], sigma_mm / spacing_yx[1]), 0.0)


def _ellipsoid_mismatch(clot: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    pts = np.argwhere(clot).astype(np.float64) * np.asarray(spacing_zyx)
    if len(pts) < 20:
        return 0.0
    centre = pts.mean(0)
    cov = np.cov((pts - centre).T)
    cov[0, 0] += float(spacing_zyx[0]) ** 2 / 12.0  # each slice stands for a slab of its thickness
    try:
        inv = np.linalg.inv(cov)
    except np.linalg.LinAlgError:
        return 0.0
    grid = np.argwhere(np.ones(clot.shape, dtype=bool)).astype(np.float64) * np.asarray(spacing_zyx) - centre
    inside = (np.einsum("ij,jk,ik->i", grid, inv, grid) <= 5.0).reshape(clot.shape)  # solid ellipsoid: 5 sigma^2
    return float((inside ^ clot).sum()) / float(clot.sum())


def _section_shape(section: np.ndarray, spacing_yx: tuple[float, float]) -> tuple[float, float]:
    edge = section & ~ndimage.binary_erosion(section)
    pts = np.argwhere(edge).astype(np.float64) * np.asarray(spacing_yx)
    if len(pts) < 8:
        return 1.0, 0.0
    centre = np.argwhere(section).astype(np.float64).mean(0) * np.asarray(spacing_yx)
    radius = np.linalg.norm(pts - centre, axis=1)
    return float(min(1.0, solidity_2d(section))), float(radius.std() / max(radius.mean(), 1e-6))


def measure_texture(hu_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_zyx: Sequence[float],
                    probability_zyx: np.ndarray | None = None,
                    geometry: TextureGeometry | None = None) -> dict[str, float]:
    """The measurements of the module docstring (units in :data:`TEXTURE_UNITS`) of one clot: HU ``hu_zyx``,
    mask ``mask_zyx`` and optionally the network's haematoma probability on the same grid (z, y, x;
    ``spacing_zyx`` mm). A mask under 20 voxels gives zeros."""
    g = geometry or TextureGeometry()
    mask = np.asarray(mask_zyx) > 0
    if int(mask.sum()) < 20:
        return {name: 0.0 for name in TEXTURE_UNITS}
    dz, dy, dx = (float(s) for s in spacing_zyx)
    voxel_ml = dz * dy * dx / 1000.0
    margin = int(np.ceil(8.0 / min(dy, dx))) + 2
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - (1, margin, margin), 0)
    hi = np.minimum(idx.max(0) + (2, margin + 1, margin + 1), mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    hu = np.asarray(hu_zyx[box], dtype=np.float32)
    clot = _fill(mask[box])
    depth = ndimage.distance_transform_edt(clot, sampling=(1e4, dy, dx))
    core = clot & (depth >= g.core_mm)
    if int(core.sum()) < 20:
        core = clot
    detail = _clot_average(hu, clot, g.detail_mm, (dy, dx))
    median = float(np.median(detail[core]))
    darkness = np.where(core, median - _clot_average(hu, clot, g.blob_mm, (dy, dx)), 0.0)
    labels, n = ndimage.label(core & (darkness > g.region_hu), np.ones((3, 3, 3), dtype=bool))
    peaks = ndimage.maximum(darkness, labels, np.arange(1, n + 1)) if n else np.zeros(0)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel_ml
    kept = np.flatnonzero(sizes >= g.min_region_ml)
    order = kept[np.argsort(-peaks[kept])] if kept.size else kept
    out = {name: 0.0 for name in TEXTURE_UNITS}
    out["dark_peak_hu"] = float(darkness[core].max())
    if order.size:
        top = labels == (order[0] + 1)
        peak = np.unravel_index(int(np.argmax(np.where(top, darkness, -np.inf))), darkness.shape)
        centroid = np.argwhere(clot).mean(0) * (dz, dy, dx)
        radius = float(np.cbrt(clot.sum() * voxel_ml * 1000.0 * 3.0 / (4.0 * np.pi)))
        out.update({
            "dark_peak_ml": float(sizes[order[0]]),
            "dark_peak_depth_mm": float(depth[peak]),
            "dark_peak_offset": float(np.linalg.norm(np.asarray(peak) * (dz, dy, dx) - centroid) / radius),
            "dark_peak_min_hu": float((median - darkness)[top].min()),
            "dark_regions": float(order.size),
            "second_dark_hu": float(peaks[order[1]]) if order.size > 1 else 0.0,
        })
    band = detail - _clot_average(hu, clot, g.context_mm, (dy, dx))
    out["mottle_sd_hu"] = float(band[core].std())
    brain = (detail >= g.brain_hu[0]) & (detail <= g.brain_hu[1])
    out["brain_density_fraction"] = float((brain & core).sum()) / float(core.sum())
    envelope = clot if probability_zyx is None else _fill(
        clot | (np.asarray(probability_zyx[box]) >= g.envelope_probability))
    outside = envelope & ~clot & brain
    if outside.any():
        lab, m = ndimage.label(outside, np.ones((3, 3, 3), dtype=bool))
        largest = float(np.bincount(lab.ravel())[1:].max()) * voxel_ml
        out["envelope_brain_ml"] = largest
        out["envelope_brain_fraction"] = largest / (float(clot.sum()) * voxel_ml)
    env_hu = ndimage.gaussian_filter(hu, (0.0, g.detail_mm / dy, g.detail_mm / dx))[envelope]
    if env_hu.size >= 100:
        low = env_hu < _otsu(env_hu)
        if 0.05 <= float(low.mean()) <= 0.95:
            coords = np.argwhere(envelope)[:, 1:].astype(np.float64) * (dy, dx)
            out["envelope_split_hu"] = float(np.median(env_hu[~low]) - np.median(env_hu[low]))
            out["envelope_split_straightness"] = _straight_split(coords, low)
    out["ellipsoid_mismatch"] = _ellipsoid_mismatch(clot, (dz, dy, dx))
    largest_slice = int(np.argmax(clot.sum(axis=(1, 2))))
    out["slice_solidity"], out["radial_cv"] = _section_shape(clot[largest_slice], (dy, dx))
    out["surround_noise_hu"] = surround_noise_hu(hu_zyx, mask, spacing_zyx)
    return {k: round(float(v), 4) for k, v in out.items()}
