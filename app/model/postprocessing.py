"""Post-processing of the model's outputs: haematoma detection, probability calibration, infratentorial flag.

The settings are stored with the weights in ``manifest.json`` under ``"postprocessing"`` and validated when the
weights are loaded (:func:`app.weights.registry.load_weights`); an absent block (or absent part) means the
defaults documented on each model. Each rule is a small pure transform with one job:

* :class:`DetectionRule` decides whether the thresholded mask is a haematoma at all: ``volume_ml >=
  min_volume_ml`` (mL, measured on the analysis grid) and the mean haematoma probability inside the mask (on
  the analysis grid) ``>= min_mean_probability``. An empty mask is never a detection (``min_volume_ml > 0``).
  With ``min_dense_hu`` set, the clot's denser part (the 95th percentile of its core after a 3 x 3 in-plane mean,
  :func:`app.model.clot_features.dense_part_hu`) must also reach it: acute blood (50-90 HU) is denser than brain
  (20-40 HU), so a mask on brain-density tissue is not a haematoma, whatever its volume. It is a physiological
  guard, set by hand and not fitted; it applies after the fitted volume and probability limits.
* :class:`Calibration` maps the raw expansion probability to a calibrated one: ``identity`` (default) or
  ``platt``: ``sigmoid(slope * logit(p_raw) + intercept)`` with ``p_raw`` clipped to ``[1e-6, 1 - 1e-6]``. The
  registered decision ``threshold`` applies to the *calibrated* probability.
* :class:`~app.model.mask_refinement.BoundaryRefinement` (off by default) moves the thresholded boundary to the
  50 % partial-volume position on the analysis grid before anything is measured;
* :class:`~app.model.ncct_markers.MarkerRules` (off by default) decides the seven NCCT markers from their
  measurements, one threshold each; with a :class:`~app.model.marker_reader.MarkerReader` (``marker_reader``,
  none by default) each marker is decided by its probability from all the clot measurements instead;
* :class:`InfratentorialRule` is a geometric heuristic (no atlas): the haematoma-mask centroid relative to the
  brain-mask centroid of the preprocessed case, in LPS mm (+z superior, +y posterior), is infratentorial when
  ``dz <= max_dz_mm`` (inferior) and ``dy >= min_dy_mm`` (posterior). The paper's population excluded
  infratentorial haematomas, so the service warns when the flag is set.

Fitting these settings on validation data (numpy/scipy only) is in :mod:`app.model.postprocessing_fit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict, Field

from app.errors import QualityWarning, ResultReason, WarningCode

MANIFEST_KEY = "postprocessing"
#: raw probabilities are clipped to [EPS, 1 - EPS] before the logit of Platt scaling
PROBABILITY_EPS = 1e-6
NOT_DETECTED_REASON = str(ResultReason.NO_HAEMATOMA_DETECTED)


class DetectionRule(BaseModel):
    """Whether the segmented mask counts as a haematoma (see the module docstring). Volumes in mL."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    min_volume_ml: float = Field(0.5, gt=0.0, description="smallest mask volume (mL, analysis grid) reported")
    min_mean_probability: float = Field(0.0, ge=0.0, le=1.0,
                                        description="smallest mean haematoma probability inside the mask")
    min_dense_hu: float | None = Field(None, ge=0.0, le=200.0,
                                       description="the clot's denser part (HU) must reach this; None: not applied")
    fitted_on: str | None = Field(None, description="free text: the data these values were chosen on")

    def detected(self, volume_ml: float, mean_probability: float, dense_hu: float | None = None) -> bool:
        """``volume_ml`` (mL), the mean haematoma probability inside the mask (0-1) and the mask's denser part
        (HU; needed when ``min_dense_hu`` is set, else ignored) -> detected."""
        if volume_ml < self.min_volume_ml or mean_probability < self.min_mean_probability:
            return False
        return self.min_dense_hu is None or (dense_hu is not None and dense_hu >= self.min_dense_hu)


def logit(p: np.ndarray | float) -> np.ndarray:
    """log(p / (1 - p)) of ``p`` clipped to ``[PROBABILITY_EPS, 1 - PROBABILITY_EPS]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """1 / (1 + exp(-x)), numerically stable for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


class Calibration(BaseModel):
    """Raw expansion probability -> calibrated probability (see the module docstring). ``slope`` must be
    positive so that calibration keeps the ranking (and the AUC) of the raw model."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    method: Literal["identity", "platt"] = "identity"
    slope: float = Field(1.0, gt=0.0)
    intercept: float = 0.0
    fitted_on: str | None = Field(None, description="free text: the data these values were fitted on")

    def apply(self, raw_probability: float) -> float:
        """The calibrated probability (0-1) of one raw probability (0-1)."""
        return float(self.apply_array(np.asarray([raw_probability]))[0])

    def apply_array(self, raw_probabilities: np.ndarray) -> np.ndarray:
        """Element-wise :meth:`apply` (float64)."""
        p = np.asarray(raw_probabilities, dtype=np.float64)
        if self.method == "identity":
            return p.copy()
        return sigmoid(self.slope * logit(p) + self.intercept)


class InfratentorialRule(BaseModel):
    """Heuristic infratentorial flag from the centroid offset (LPS mm) of the haematoma from the brain."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    max_dz_mm: float = Field(-20.0, description="haematoma centroid at most this far above the brain's (mm, +S)")
    min_dy_mm: float = Field(15.0, description="haematoma centroid at least this far behind the brain's (mm, +P)")

    def applies(self, offset_lps_mm: Sequence[float] | None) -> bool:
        """``offset_lps_mm``: haematoma centroid minus brain centroid, (x, y, z) LPS mm; None (no mask) -> False."""
        if offset_lps_mm is None:
            return False
        _, dy, dz = (float(v) for v in offset_lps_mm)
        return bool(dz <= self.max_dz_mm and dy >= self.min_dy_mm)


from app.model.clot_features import ExpansionModel  # noqa: E402  (after the rules it sits beside)
from app.model.marker_reader import MarkerReader  # noqa: E402
from app.model.mask_refinement import BoundaryRefinement  # noqa: E402
from app.model.ncct_markers import MarkerRules  # noqa: E402


class Postprocessing(BaseModel):
    """The ``"postprocessing"`` block of a weights manifest (every part optional, defaults documented)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detection: DetectionRule = Field(default_factory=DetectionRule)
    calibration: Calibration = Field(default_factory=Calibration)
    infratentorial: InfratentorialRule = Field(default_factory=InfratentorialRule)
    expansion_model: ExpansionModel = Field(default_factory=ExpansionModel)
    refinement: BoundaryRefinement = Field(default_factory=BoundaryRefinement)
    markers: MarkerRules = Field(default_factory=MarkerRules)
    marker_reader: MarkerReader | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any] | None) -> Postprocessing:
        """The manifest's block, or the defaults when it has none. Raises ``pydantic.ValidationError`` (a
        ``ValueError``) for an invalid block."""
        block = (manifest or {}).get(MANIFEST_KEY) if isinstance(manifest, Mapping) else None
        if block is None:
            return cls()
        return cls.model_validate(block)


# --- geometry -----------------------------------------------------------------------------------------------
def centroid_lps(mask_zyx: np.ndarray, geometry: sitk.Image) -> tuple[float, float, float] | None:
    """Centroid (x, y, z LPS mm) of the foreground voxels (> 0) of ``mask_zyx`` (z, y, x), an array on
    ``geometry``'s grid (origin / spacing / direction used); None for an empty mask. Computed from the three
    marginal projections (exact, without listing the voxels)."""
    arr = np.asarray(mask_zyx)
    if arr.ndim != 3 or tuple(reversed(arr.shape)) != tuple(geometry.GetSize()):
        raise ValueError(f"mask {arr.shape} (z, y, x) does not match the grid size {geometry.GetSize()} (x, y, z)")
    binary = arr > 0
    total = float(np.count_nonzero(binary))
    if total == 0:
        return None
    index_xyz = []
    for axes in ((0, 1), (0, 2), (1, 2)):  # marginals along x, y, z
        marginal = np.count_nonzero(binary, axis=axes)
        index_xyz.append(float(np.dot(np.arange(marginal.size), marginal)) / total)
    point = geometry.TransformContinuousIndexToPhysicalPoint(index_xyz)
    return (float(point[0]), float(point[1]), float(point[2]))


def centroid_offset_lps(
    haematoma_lps: Sequence[float] | None, brain_lps: Sequence[float] | None
) -> tuple[float, float, float] | None:
    """``haematoma_lps - brain_lps`` (x, y, z LPS mm), None when either is missing."""
    if haematoma_lps is None or brain_lps is None:
        return None
    offset = tuple(float(h) - float(b) for h, b in zip(haematoma_lps, brain_lps, strict=True))
    if not all(math.isfinite(v) for v in offset):
        return None
    return offset  # type: ignore[return-value]


def mean_inside(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``values`` where ``mask`` > 0 (same shape); 0.0 for an empty mask."""
    inside = np.asarray(mask) > 0
    n = int(np.count_nonzero(inside))
    if n == 0:
        return 0.0
    return float(np.asarray(values)[inside].sum(dtype=np.float64) / n)


# --- result-level warnings ----------------------------------------------------------------------------------
def result_warnings(result: Any, postprocessing: Postprocessing) -> list[QualityWarning]:
    """Warnings about the prediction itself (appended to ``input.warnings``): ``infratentorial_haematoma``
    when ``result.infratentorial`` is set."""
    warnings: list[QualityWarning] = []
    if getattr(result, "infratentorial", False):
        rule = postprocessing.infratentorial
        warnings.append(QualityWarning(
            WarningCode.INFRATENTORIAL_HAEMATOMA,
            "The haematoma lies probably below the tentorium (infratentorial). The population the model follows "
            "(Zhong et al. 2021) excluded infratentorial haematomas, so the expansion probability may not apply.",
            {"method": "centroid offset from the brain centroid (heuristic, no atlas)",
             "max_dz_mm": rule.max_dz_mm, "min_dy_mm": rule.min_dy_mm},
        ))
    return warnings
