"""The seven NCCT markers of haematoma expansion (Zhong et al. 2021, Supplemental Table 2) measured on the image.

Each marker is decided from the baseline image (HU) and the haematoma mask on the analysis grid (z, y, x; mm) by a
quantitative reading of the supplement's criterion; :func:`measure_markers` returns the measurement behind each
decision and :class:`MarkerRules` the thresholds, stored with the weights (fitted on a training cohort's marker
truth by ``model_training.marker_fit``). Work is in-plane (axial slices), as radiologists read them.

Definitions (``clot`` = the mask with holes filled slice by slice; ``inner`` = the clot eroded in-plane by
``surface_mm``; ``envelope`` = the clot united with the network's probability >= ``envelope_probability``
(which still holds the low-density parts of the clot that the density-based boundary leaves out), closed
in-plane by ``envelope_mm`` and filled; ``median`` = the median HU of the inner clot; HU smoothed by a
``smoothing_mm`` in-plane Gaussian first):

Local darkness: for each inner-clot voxel, the clot's Gaussian average at ``dark_context_mm`` minus its average at
``dark_detail_mm``, both normalised over the clot (the brain outside does not count): how much darker a spot is
than the clot around it, HU. A "dark focus" is a connected inner-clot region darker than ``dark_hu`` of at least
``min_focus_ml``. The decisions (measurement in brackets):

* ``hypodensity``: a hypodense region strictly encapsulated within the haematoma [``darkness_max_hu``: the 99.5th
  percentile of the inner clot's local darkness; inner voxels only, so the region is encapsulated].
* ``black_hole``: an encapsulated region more than 28 HU darker than the surrounding haematoma
  [``darkness_max_hu`` too, with its own threshold: the Gaussian averages blur the focus, so the fitted threshold
  sits below the supplement's 28 HU].
* ``swirl``: a region of hypo- or iso-attenuation compared with the brain, need not be encapsulated
  [``swirl_ml``: the largest connected inner-clot region in the ``swirl_hu`` range, mL].
* ``blend``: a hypoattenuating area next to a hyperattenuating one with a well-defined margin and > 18 HU
  between them [``blend_contrast_hu``: the inner clot is split at its Otsu threshold; when both parts hold at
  least ``min_part_fraction`` of it and a straight line (a Fisher discriminant of the in-plane position, best
  threshold) separates them with accuracy >= ``min_straightness``, the difference of the parts' median HU;
  else 0].
* ``fluid_level``: an area hypodense to the brain above (anterior, non-dependent in a supine patient) and a
  hyperattenuating one below a straight line [``fluid_level_score``: when the envelope's voxels below
  ``fluid_hu`` lie anterior to the rest, the accuracy with which one A-P position separates them, times
  ``min(1, 4 x`` their share of the envelope``)``; else 0].
* ``irregular_shape``: two or more focal margin irregularities [``irregularity``: 1 - solidity, the clot's
  volume over the volume of its 3D convex hull, slices as slabs].
* ``heterogeneous_density``: several distinct hypodense foci [``dark_foci``: the number of dark foci].

Further measurements (inputs of the expansion model, no decision of their own): ``hypodense_contrast_hu`` (the
inner clot's median minus its 10th percentile), ``black_hole_contrast_hu`` (median minus 2nd percentile),
``hypodense_ml`` (largest inner region more than ``hypodense_delta_hu`` below the median, mL), ``density_sd_hu``,
``concavity`` (the clot closed by 5 mm minus the clot dilated by 1 mm, over the clot's volume: notches of the
margin), ``dark_ml`` (volume darker than ``dark_hu``, mL).

The thresholds are fitted on a training cohort's marker truth (maximum Cohen's kappa per marker) and stored with
the weights; the defaults follow the supplement's numbers where it gives one (18 HU blend, 28 HU black hole, three foci).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

NCCT_MARKERS: tuple[str, ...] = (
    "hypodensity", "black_hole", "swirl", "blend", "fluid_level", "irregular_shape", "heterogeneous_density",
)
#: marker -> the measurement that decides it (a value in :func:`measure_markers`' output)
MEASUREMENT_OF: dict[str, str] = {
    "hypodensity": "darkness_max_hu",
    "black_hole": "darkness_max_hu",
    "swirl": "swirl_ml",
    "blend": "blend_contrast_hu",
    "fluid_level": "fluid_level_score",
    "irregular_shape": "irregularity",
    "heterogeneous_density": "dark_foci",
}
MEASUREMENT_UNITS: dict[str, str] = {
    "hypodense_contrast_hu": "HU", "hypodense_ml": "mL", "black_hole_contrast_hu": "HU", "swirl_ml": "mL",
    "blend_contrast_hu": "HU", "fluid_level_score": "1", "irregularity": "1", "density_sd_hu": "HU",
    "concavity": "1", "dark_ml": "mL", "darkness_max_hu": "HU", "dark_foci": "count",
}
DEFAULT_THRESHOLDS: dict[str, float] = {
    "hypodensity": 8.0, "black_hole": 28.0, "swirl": 0.3, "blend": 18.0, "fluid_level": 0.2,
    "irregular_shape": 0.2, "heterogeneous_density": 3.0,
}
IN_PLANE = np.ones((1, 3, 3), dtype=bool)


class MarkerGeometry(BaseModel):
    """How the regions behind the markers are drawn (HU, mm, mL; see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    smoothing_mm: float = Field(1.5, gt=0.0)
    envelope_mm: float = Field(3.0, gt=0.0)
    envelope_probability: float = Field(0.3, gt=0.0, le=1.0)
    surface_mm: float = Field(1.5, ge=0.0)
    hypodense_delta_hu: float = Field(10.0, gt=0.0)
    min_region_ml: float = Field(0.05, ge=0.0)
    swirl_hu: tuple[float, float] = (24.0, 45.0)
    fluid_hu: float = 26.0
    min_part_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    min_straightness: float = Field(0.85, gt=0.5, le=1.0)
    dark_detail_mm: float = Field(1.5, gt=0.0)
    dark_context_mm: float = Field(6.0, gt=0.0)
    dark_hu: float = Field(8.0, gt=0.0)
    min_focus_ml: float = Field(0.03, ge=0.0)


class MarkerRules(BaseModel):
    """Marker decisions: ``present`` when the measurement is at or above the marker's threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = False
    geometry: MarkerGeometry = Field(default_factory=MarkerGeometry)
    thresholds: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    fitted_on: str | None = None

    def decide(self, measurements: Mapping[str, float]) -> dict[str, bool]:
        """Marker name -> present, from :func:`measure_markers`' output."""
        return {name: bool(float(measurements[MEASUREMENT_OF[name]]) >= self.thresholds.get(
            name, DEFAULT_THRESHOLDS[name])) for name in NCCT_MARKERS}


def _px(mm: float, spacing: float) -> int:
    return max(1, int(round(mm / spacing)))


def _regions(candidate: np.ndarray, voxel_ml: float, min_ml: float) -> list[np.ndarray]:
    labels, n = ndimage.label(candidate, np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    return [labels == (i + 1) for i in np.flatnonzero(sizes >= min_ml)]


def _solidity(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    edge = mask & ~ndimage.binary_erosion(mask, IN_PLANE)
    pts = np.argwhere(edge).astype(np.float64) * np.asarray(spacing_zyx)
    if len(pts) < 8 or np.ptp(pts[:, 0]) == 0:
        return 1.0
    dz = float(spacing_zyx[0]) / 2.0  # each slice stands for a slab of its thickness
    pts = np.concatenate([pts + (dz, 0, 0), pts - (dz, 0, 0)])
    try:
        hull = ConvexHull(pts[:: max(1, len(pts) // 6000)])
    except QhullError:
        return 1.0
    volume = float(mask.sum()) * float(np.prod(spacing_zyx))
    return float(min(1.0, volume / max(hull.volume, 1e-6)))


def _straight_split(coords: np.ndarray, is_low: np.ndarray) -> float:
    """Accuracy of the best linear split (Fisher discriminant of the position) of ``is_low`` vs the rest."""
    a, b = coords[is_low], coords[~is_low]
    if len(a) < 5 or len(b) < 5:
        return 0.0
    cov = np.cov(coords.T) + np.eye(coords.shape[1]) * 1e-3
    w = np.linalg.solve(cov, a.mean(0) - b.mean(0))
    proj = coords @ w
    order = np.argsort(proj)
    labels = is_low[order]
    # the best threshold along the projection: maximise correct = low above + high below
    cum_low = np.cumsum(labels)
    n = len(labels)
    correct = (np.arange(1, n + 1) - cum_low) + (cum_low[-1] - cum_low)
    return float(max(correct.max(), n - correct.min()) / n)


def _fill(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def _closed(mask: np.ndarray, steps: int) -> np.ndarray:
    padded = np.pad(mask, ((0, 0), (steps, steps), (steps, steps)))
    return ndimage.binary_closing(padded, IN_PLANE, iterations=steps)[:, steps:-steps, steps:-steps] | mask


@dataclass(frozen=True)
class ClotFrame:
    """The clot in its bounding box (5 mm margin in-plane, one slice in z), as the marker measurements and the
    marker regions (:mod:`app.model.marker_regions`) see it: ``raw`` and in-plane-smoothed ``hu`` (HU), the clot
    with its holes filled slice by slice, and the ``inner`` clot (``surface_mm`` in from its surface)."""

    box: tuple[slice, ...]
    raw: np.ndarray
    hu: np.ndarray
    clot: np.ndarray
    inner: np.ndarray
    spacing_yx: tuple[float, float]
    voxel_ml: float

    @property
    def pixel(self) -> float:
        return min(self.spacing_yx)

    @classmethod
    def of(cls, hu_zyx: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float], g: MarkerGeometry) -> ClotFrame:
        """``mask``: bool (z, y, x) with at least one voxel; ``spacing_zyx`` in mm."""
        _, dy, dx = (float(s) for s in spacing_zyx)
        margin = _px(5.0, min(dy, dx)) + 3
        idx = np.argwhere(mask)
        lo = np.maximum(idx.min(0) - (1, margin, margin), 0)
        hi = np.minimum(idx.max(0) + (2, margin + 1, margin + 1), mask.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        raw = np.asarray(hu_zyx[box], dtype=np.float32)
        hu = ndimage.gaussian_filter(raw, (0.0, g.smoothing_mm / dy, g.smoothing_mm / dx))
        clot = _fill(mask[box])
        inner = ndimage.binary_erosion(clot, IN_PLANE, iterations=_px(g.surface_mm, min(dy, dx))) \
            if g.surface_mm > 0 else clot
        if int(inner.sum()) < 20:
            inner = clot
        return cls(box, raw, hu, clot, inner, (dy, dx), float(np.prod(spacing_zyx)) / 1000.0)


def measure_markers(hu_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_zyx: Sequence[float],
                    probability_zyx: np.ndarray | None = None,
                    geometry: MarkerGeometry | None = None) -> dict[str, float]:
    """The measurements of the module docstring (units in :data:`MEASUREMENT_UNITS`), from HU ``hu_zyx``, the
    haematoma mask ``mask_zyx`` and (optionally) the network's haematoma probability on the same grid (z, y, x;
    ``spacing_zyx`` mm). An empty mask gives zeros."""
    g = geometry or MarkerGeometry()
    mask = np.asarray(mask_zyx) > 0
    if int(mask.sum()) < 20:
        return {name: 0.0 for name in MEASUREMENT_UNITS}
    frame = ClotFrame.of(hu_zyx, mask, spacing_zyx, g)
    box, hu, clot, inner, voxel_ml, pixel = frame.box, frame.hu, frame.clot, frame.inner, frame.voxel_ml, frame.pixel
    dy, dx = frame.spacing_yx
    around = clot if probability_zyx is None else clot | (np.asarray(probability_zyx[box]) >= g.envelope_probability)
    envelope = _fill(_closed(around, _px(g.envelope_mm, pixel)))
    values = hu[inner]
    median = float(np.median(values))

    hypodense = _regions(inner & (hu < median - g.hypodense_delta_hu) & (hu > 0.0), voxel_ml, g.min_region_ml)
    swirl = _regions(inner & (hu >= g.swirl_hu[0]) & (hu <= g.swirl_hu[1]), voxel_ml, g.min_region_ml)

    blend_contrast = 0.0
    if values.size >= 100:
        low = values < _otsu(values)
        if g.min_part_fraction <= float(low.mean()) <= 1 - g.min_part_fraction:
            coords = np.argwhere(inner)[:, 1:].astype(np.float64) * (dy, dx)
            if _straight_split(coords, low) >= g.min_straightness:
                blend_contrast = float(np.median(values[~low]) - np.median(values[low]))

    fluid_score = 0.0
    env_values = hu[envelope]
    fluid = env_values < g.fluid_hu
    if fluid.sum() >= 20 and (~fluid).sum() >= 20:
        y = np.argwhere(envelope)[:, 1].astype(np.float64) * dy
        if y[fluid].mean() < y[~fluid].mean():  # LPS: a smaller y is anterior (non-dependent when supine)
            fluid_score = _straight_split(y[:, None], fluid) * float(min(1.0, 4.0 * fluid.mean()))

    darkness = _darkness(frame.raw, clot, inner, (dy, dx), g)
    dark = np.zeros(clot.shape, dtype=bool)
    dark[inner] = darkness > g.dark_hu
    dark_regions = _regions(dark, voxel_ml, g.min_focus_ml)

    notches = _fill(_closed(clot, _px(5.0, pixel))) & ~ndimage.binary_dilation(clot, IN_PLANE,
                                                                                 iterations=_px(1.0, pixel))
    n_clot = max(float(clot.sum()), 1.0)
    return {
        "hypodense_contrast_hu": round(median - float(np.percentile(values, 10)), 3),
        "hypodense_ml": round(max((float(r.sum()) * voxel_ml for r in hypodense), default=0.0), 4),
        "black_hole_contrast_hu": round(median - float(np.percentile(values, 2)), 3),
        "swirl_ml": round(max((float(r.sum()) * voxel_ml for r in swirl), default=0.0), 4),
        "blend_contrast_hu": round(blend_contrast, 3),
        "fluid_level_score": round(fluid_score, 4),
        "irregularity": round(1.0 - _solidity(clot, spacing_zyx), 4),
        "density_sd_hu": round(float(values.std()), 3),
        "concavity": round(float(notches.sum()) / n_clot, 4),
        "dark_ml": round(float(dark.sum()) * voxel_ml, 4),
        "darkness_max_hu": round(float(np.percentile(darkness, 99.5)) if darkness.size else 0.0, 3),
        "dark_foci": float(len(dark_regions)),
    }


def _darkness(hu: np.ndarray, clot: np.ndarray, inner: np.ndarray, spacing_yx: tuple[float, float],
              g: MarkerGeometry) -> np.ndarray:
    """Local darkness (HU) of the inner clot's voxels: the clot's Gaussian average at ``dark_context_mm`` minus
    its average at ``dark_detail_mm`` (both normalised over the clot, so brain outside does not count)."""
    weight = clot.astype(np.float32)
    values = np.where(clot, hu, 0.0).astype(np.float32)

    def average(sigma_mm: float) -> np.ndarray:
        sigma = (0.0, sigma_mm / spacing_yx[0], sigma_mm / spacing_yx[1])
        return ndimage.gaussian_filter(values, sigma) / np.maximum(ndimage.gaussian_filter(weight, sigma), 1e-3)

    return (average(g.dark_context_mm) - average(g.dark_detail_mm))[inner]


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])
