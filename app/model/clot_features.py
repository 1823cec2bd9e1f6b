"""Quantitative measurements of the segmented clot that carry the NCCT expansion markers, and the expansion model
that combines them with the network's output.

The dual-output network's classification branch sees the clot through the bridge layer, a quarter of the input
resolution (20 mm along z on the CPU grid); the markers radiologists read (hypodensities, black hole, swirl,
blend, heterogeneous density, irregular shape) are millimetre-scale density patterns inside and along the clot.
These measurements read them from the HU image inside the predicted haematoma on the analysis grid:

* ``log_volume_ml``: ln(1 + volume in mL);
* ``median_hu``, ``sd_hu``: median and SD of the clot core (the mask with holes filled slice by slice, eroded by
  2 pixels in-plane), HU;
* ``hypodense_fraction`` / ``black_hole_fraction``: share of the core whose in-plane 3x3 mean is more than 15 / 28
  HU below the core median (Supplemental Table 2: hypodensity; black hole > 28 HU);
* ``low_tail_hu`` / ``high_tail_hu``: 5th / 95th percentile of that smoothed core minus the median (HU);
* ``irregularity``: surface voxels / volume^(2/3) of the mask (larger for lobulated or irregular clots);
* ``holes_fraction``: share of the filled mask that the thresholded mask leaves out (hypodense foci below the
  segmentation threshold).

:class:`ExpansionModel` is a logistic regression on the standardised logit of the network's expansion
probability, these measurements and the NCCT-marker measurements of :mod:`app.model.ncct_markers`, fitted on training cases (``model_training.expansion_model``) and stored with
the weights; its output is the ``raw_probability`` that calibration then maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from app.model.clot_texture import TEXTURE_UNITS
from app.model.marker_trees import RegressionTree
from app.model.ncct_markers import MEASUREMENT_UNITS, NCCT_MARKERS

FEATURE_NAMES: tuple[str, ...] = (
    "log_volume_ml", "median_hu", "sd_hu", "hypodense_fraction", "black_hole_fraction", "low_tail_hu",
    "high_tail_hu", "irregularity", "holes_fraction",
)


def dense_part_hu(features: dict[str, float]) -> float:
    """The clot's denser part (HU): the 95th percentile of its core after a 3 x 3 in-plane mean, from the
    measurements of :func:`clot_features` (``median_hu + high_tail_hu``)."""
    return float(features["median_hu"] + features["high_tail_hu"])


def clot_features(hu_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """The measurements of the module docstring for one clot. ``hu_zyx`` float HU and ``mask_zyx`` {0, 1} on the
    same (analysis) grid, z-y-x; ``spacing_zyx`` in mm. An empty mask gives zeros."""
    mask = np.asarray(mask_zyx) > 0
    if not mask.any():
        return {name: 0.0 for name in FEATURE_NAMES}
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - (1, 4, 4), 0)
    hi = idx.max(0) + (2, 5, 5)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    m = mask[box]
    hu = np.asarray(hu_zyx[box], dtype=np.float32)
    closed = ndimage.binary_closing(m, np.ones((1, 3, 3), bool), iterations=2) | m
    filled = np.stack([ndimage.binary_fill_holes(s) for s in closed])
    core = ndimage.binary_erosion(filled, np.ones((1, 3, 3), bool), iterations=2)
    if core.sum() < 20:
        core = filled
    smooth = ndimage.uniform_filter(hu, size=(1, 3, 3))[core]
    values = hu[core]
    median = float(np.median(values))
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    n = float(m.sum())
    surface = float((m & ~ndimage.binary_erosion(m, np.ones((3, 3, 3), bool))).sum())
    return {
        "log_volume_ml": float(np.log1p(n * voxel_ml)),
        "median_hu": median,
        "sd_hu": float(values.std()),
        "hypodense_fraction": float(np.mean(smooth < median - 15.0)),
        "black_hole_fraction": float(np.mean(smooth < median - 28.0)),
        "low_tail_hu": float(np.percentile(smooth, 5) - median),
        "high_tail_hu": float(np.percentile(smooth, 95) - median),
        "irregularity": surface / max(n, 1.0) ** (2.0 / 3.0),
        "holes_fraction": float((filled & ~m).sum()) / max(float(filled.sum()), 1.0),
    }


class ExpansionModel(BaseModel):
    """``method="network"``: the network's expansion probability as it is. ``method="network+clot"``: logistic
    regression ``sigmoid(intercept + sum_k coefficients[k] * (x_k - means[k]) / scales[k])`` over
    ``x = (logit(network probability), *clot features in feature_names order)``. ``method="trees"``:
    ``sigmoid(baseline + sum of the trees' leaves)`` over the same ``x``, gradient-boosted regression trees
    (:mod:`app.model.marker_trees` layout) whose raw score is the logit of the expansion probability; ``target``
    says what they were fitted to (``label``: the expansion label, log-loss; ``risk_image``: the logit of a
    synthetic cohort's image-only risk, squared error)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    method: str = Field("network", pattern="^(network|network\\+clot|trees)$")
    feature_names: tuple[str, ...] = ()
    means: tuple[float, ...] = ()
    scales: tuple[float, ...] = ()
    coefficients: tuple[float, ...] = ()
    intercept: float = 0.0
    baseline: float = 0.0
    trees: tuple[RegressionTree, ...] = ()
    target: Literal["label", "risk_image"] | None = None
    fitted_on: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ExpansionModel:
        if self.method == "network":
            return self
        n = len(self.feature_names)
        known = {"network_logit", *FEATURE_NAMES, *MEASUREMENT_UNITS, *TEXTURE_UNITS,
                 *(f"{m}_probability" for m in NCCT_MARKERS)}
        unknown = set(self.feature_names) - known
        if unknown or n == 0:
            raise ValueError(f"expansion model: feature_names must name known features (unknown: "
                             f"{', '.join(sorted(unknown)) or 'none given'}; known: {', '.join(sorted(known))})")
        if self.method == "network+clot":
            if not (len(self.means) == len(self.scales) == len(self.coefficients) == n):
                raise ValueError("expansion model: feature_names, means, scales and coefficients must align")
            if any(s <= 0 for s in self.scales):
                raise ValueError("expansion model: scales must be > 0")
        else:
            if not self.trees or self.target is None:
                raise ValueError("expansion model: method 'trees' needs trees and their target")
            if any(f >= n for tree in self.trees for f in tree.feature):
                raise ValueError("expansion model: a tree splits on a feature index beyond feature_names")
        return self

    def probability(self, network_probability: float, features: Mapping[str, float]) -> float:
        """The model's (uncalibrated) expansion probability, 0-1."""
        if self.method == "network":
            return float(network_probability)
        p = min(max(float(network_probability), 1e-6), 1 - 1e-6)
        values = {"network_logit": float(np.log(p / (1 - p))), **features}
        if self.method == "trees":
            x = np.array([float(values[k]) for k in self.feature_names])
            z = self.baseline + sum(tree.score(x) for tree in self.trees)
        else:
            z = self.intercept + sum(c * (values[k] - m) / s for k, m, s, c in
                                     zip(self.feature_names, self.means, self.scales, self.coefficients, strict=True))
        return float(1.0 / (1.0 + np.exp(-z)))
