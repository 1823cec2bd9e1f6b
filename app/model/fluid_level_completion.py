"""The serum part of a fluid level: step 7 of :func:`app.model.mask_refinement.refine_mask`.

A haematoma with a fluid level keeps its non-dependent serum part, less dense than the brain, which the network
and the partial-volume rule leave out. On each axial slice, a connected region of serum density (``serum_hu``,
after a 1 mm in-plane Gaussian and a 1 mm opening) that touches the mask joins it when it lies in front of the mask
(anterior, smaller y), holds ``serum_min_share`` to ``serum_max_ratio`` of the mask's area, is no wider than
``serum_max_width_ratio`` times the mask, is closed (does not reach the edge of the ``SERUM_REACH_MM`` search box),
meets the mask along a horizontal line (over at least ``level_min_share`` of the mask's width, slope at most
``level_max_slope``, SD about the line at most ``level_max_sd_mm``) and the two together are convex (2D solidity at
least ``union_min_solidity``): the outline of a clot split by a fluid level. With ``serum_within_width`` the serum
is looked for only over the mask's own columns (plus the partial-volume gap), so that hypodense white matter or
oedema that runs sideways from the serum part does not fail the width test for the whole slice. CSF (below
``serum_hu[0]``) is not serum, so the blood-CSF level in a ventricle is never extended; a round clot beside
hypodense brain fails the width, line or convexity test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

if TYPE_CHECKING:
    from app.model.mask_refinement import BoundaryRefinement

SERUM_REACH_MM = 45.0


def solidity_2d(section: np.ndarray) -> float:
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


def serum_part(mask: np.ndarray, hu: np.ndarray, spacing_yx: tuple[float, float],
                settings: BoundaryRefinement) -> np.ndarray:
    """The serum part in front of a fluid level of the clot (module docstring), bool like ``mask``."""
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
            if solidity_2d(union) >= settings.union_min_solidity:
                out[z] |= union & ~section
    return out
