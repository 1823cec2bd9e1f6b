"""Where each reported NCCT marker lies: the image regions behind the markers, for the overview's outlines.

The reader (:mod:`app.model.marker_reader`) decides *whether* a marker is present from measurements of the whole
clot; a radiologist checking that answer wants to see *where*. For each marker reported present this module
draws the region that its measurements come from (:mod:`app.model.ncct_markers`, same geometry and HU
criteria), on the analysis grid (z, y, x, bool):

* ``hypodensity`` and ``heterogeneous_density``: the dark foci of the inner clot (local darkness above
  ``dark_hu``, each focus at least ``min_focus_ml``), one outline for both (:data:`SHARED_REGION`);
* ``black_hole``: inner-clot voxels more than :data:`BLACK_HOLE_HU` below their clot surroundings (the
  supplement's criterion), as foci of at least ``min_focus_ml``;
* ``swirl``: the inner-clot regions of brain-like density (``swirl_hu``) of at least ``min_region_ml``;
* ``blend``: the darker part of the inner clot's Otsu split (its largest connected part);
* ``fluid_level``: the part of the clot's envelope below ``fluid_hu`` (the serum above the level, largest part);
* ``irregular_shape``: the margin's concavities, i.e. what a 5 mm in-plane closing adds to the clot (regions of
  at least ``min_region_ml``).

A marker whose region comes out empty is left out: the overview outlines only what it can show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from app.model.ncct_markers import (
    IN_PLANE,
    ClotFrame,
    MarkerGeometry,
    _closed,
    _darkness,
    _fill,
    _otsu,
    _px,
    _regions,
)

BLACK_HOLE_HU = 28.0
#: markers outlined by another marker's region (the same dark foci)
SHARED_REGION: dict[str, str] = {"heterogeneous_density": "hypodensity"}


def _largest(candidate: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(candidate, np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return candidate
    return labels == (1 + int(np.argmax(np.bincount(labels.ravel())[1:])))


def _union(regions: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for r in regions:
        out |= r
    return out


def marker_regions(hu_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_zyx: Sequence[float],
                   present: Mapping[str, bool], probability_zyx: np.ndarray | None = None,
                   geometry: MarkerGeometry | None = None) -> dict[str, np.ndarray]:
    """Marker name -> bool region (z, y, x, the grid of ``hu_zyx``) for each marker in ``present`` that is True
    and has a non-empty region (see the module docstring). ``hu_zyx`` in HU, ``spacing_zyx`` in mm,
    ``probability_zyx`` the network's haematoma probability (0-1) for the fluid level's envelope."""
    g = geometry or MarkerGeometry()
    wanted = {SHARED_REGION.get(name, name) for name, on in present.items() if on}
    mask = np.asarray(mask_zyx) > 0
    if not wanted or int(mask.sum()) < 20:
        return {}
    frame = ClotFrame.of(hu_zyx, mask, spacing_zyx, g)
    box, hu, clot, inner, voxel_ml, pixel = frame.box, frame.hu, frame.clot, frame.inner, frame.voxel_ml, frame.pixel
    dy, dx = frame.spacing_yx

    found: dict[str, np.ndarray] = {}
    if wanted & {"hypodensity", "black_hole"}:
        darkness = np.zeros(clot.shape, dtype=np.float32)
        darkness[inner] = _darkness(frame.raw, clot, inner, (dy, dx), g)
        if "hypodensity" in wanted:
            found["hypodensity"] = _union(_regions(darkness > g.dark_hu, voxel_ml, g.min_focus_ml), clot.shape)
        if "black_hole" in wanted:
            found["black_hole"] = _union(_regions(darkness > BLACK_HOLE_HU, voxel_ml, g.min_focus_ml), clot.shape)
    if "swirl" in wanted:
        band = inner & (hu >= g.swirl_hu[0]) & (hu <= g.swirl_hu[1])
        found["swirl"] = _union(_regions(band, voxel_ml, g.min_region_ml), clot.shape)
    if "blend" in wanted and int(inner.sum()) >= 100:
        found["blend"] = _largest(inner & (hu < _otsu(hu[inner])))
    if "fluid_level" in wanted:
        around = clot if probability_zyx is None else \
            clot | (np.asarray(probability_zyx[box]) >= g.envelope_probability)
        envelope = _fill(_closed(around, _px(g.envelope_mm, pixel)))
        found["fluid_level"] = _largest(envelope & (hu < g.fluid_hu))
    if "irregular_shape" in wanted:
        notches = _fill(_closed(clot, _px(5.0, pixel))) & ~ndimage.binary_dilation(clot, IN_PLANE,
                                                                                     iterations=_px(1.0, pixel))
        found["irregular_shape"] = _union(_regions(notches, voxel_ml, g.min_region_ml), clot.shape)

    out: dict[str, np.ndarray] = {}
    for name, region in found.items():
        if region.any():
            full = np.zeros(mask.shape, dtype=bool)
            full[box] = region
            out[name] = full
    return out
