"""Test-time augmentation (TTA) intervals and abstention.

**Augmentations** (:func:`augmentations`) act on the model input (float32, z-y-x on the model grid, centred on the
brain centroid): pass k flips left-right (the x axis, about the grid centre, i.e. about the mid-sagittal plane)
on odd k and shifts the volume in-plane by whole voxels (``SHIFT_VOXELS``: about 2.3 mm on the CPU grid) in a
fixed cycle; the predicted haematoma probabilities are mapped back (flip and shift undone) before use. Every pass
is then measured like the primary one (inverse mapping to the analysis grid, threshold, volume, clot measurements,
expansion model, calibration), so the spread reflects the whole chain, not the network alone.

**Intervals** (:func:`interval`): a normalised split-conformal interval around the primary estimate. For the
haematoma volume V (mL) the scale is ``s = sd_tta(V) + 0.05 V + 0.1 mL``; for the expansion probability it is
computed on the logit scale, ``s = sd_tta(logit p) + 0.1``, and mapped back. The interval is ``estimate +- q s``
with ``q`` the conformal quantile fitted on a calibration cohort (``python -m model_training fit-uncertainty``,
stored in the weights manifest under ``"uncertainty"``); without a fitted ``q`` the normal quantile of the level
is used (1.645 for 90 %). The fixed terms keep an interval from collapsing when every pass agrees. A scale may
carry one quantile per side (``q_below``, ``q_above``: the conformal quantiles at ``(1 + level) / 2`` of
``(estimate - truth) / s`` and of ``(truth - estimate) / s``), the interval then being
``[estimate - q_below s, estimate + q_above s]``: the volume errors are skewed (a network that leaves out the
darker part of a clot reads it small far more often than large), and a symmetric interval wide enough for the
long side wastes width on the short one.

**Abstention** (:func:`abstain_reasons`, codes :class:`~app.errors.AbstainReason`): the mask reaches the edge of
the analysed field of view; an interval is wider than the manifest's limits (TTA only); the haematoma is probably
infratentorial; the image statistics (:func:`image_statistics`) fall outside the ranges recorded on the training
cohort (only when the manifest records them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.errors import AbstainReason

MANIFEST_KEY = "uncertainty"
SHIFT_VOXELS = 2
_SHIFT_CYCLE = ((0, 0), (SHIFT_VOXELS, 0), (-SHIFT_VOXELS, 0), (0, SHIFT_VOXELS), (0, -SHIFT_VOXELS),
                (SHIFT_VOXELS, SHIFT_VOXELS), (-SHIFT_VOXELS, -SHIFT_VOXELS), (SHIFT_VOXELS, -SHIFT_VOXELS),
                (-SHIFT_VOXELS, SHIFT_VOXELS))
VOLUME_REL_FLOOR = 0.05
VOLUME_ABS_FLOOR_ML = 0.1
LOGIT_FLOOR = 0.1
DEFAULT_GPU_PASSES = 8  # the TTA passes of a CUDA predictor unless configured


@dataclass(frozen=True)
class Augmentation:
    """One TTA pass: ``flip_x`` (left-right) then an in-plane shift (dy, dx) in model-grid voxels."""

    flip_x: bool
    shift_yx: tuple[int, int]

    def apply(self, tensor: np.ndarray) -> np.ndarray:
        """The augmented model input (edges filled with the nearest input value: background)."""
        out = tensor[:, :, ::-1] if self.flip_x else tensor
        return np.ascontiguousarray(_shift(out, self.shift_yx, edge=True), dtype=np.float32)

    def invert(self, prob: np.ndarray) -> np.ndarray:
        """A probability map of the augmented input back on the original model grid (uncovered voxels 0)."""
        back = _shift(prob, (-self.shift_yx[0], -self.shift_yx[1]), edge=False)
        return np.ascontiguousarray(back[:, :, ::-1] if self.flip_x else back)


def _shift(arr: np.ndarray, shift_yx: tuple[int, int], *, edge: bool) -> np.ndarray:
    dy, dx = shift_yx
    if dy == 0 and dx == 0:
        return arr
    pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
    padded = np.pad(arr, pad, mode="edge" if edge else "constant")
    h, w = arr.shape[1], arr.shape[2]
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[:, y0:y0 + h, x0:x0 + w]


def augmentations(passes: int) -> list[Augmentation]:
    """The ``passes`` extra TTA passes (the primary, unaugmented pass is not among them), deterministic."""
    out = []
    for k in range(1, passes + 1):
        out.append(Augmentation(flip_x=k % 2 == 1, shift_yx=_SHIFT_CYCLE[(k // 2) % len(_SHIFT_CYCLE)]))
    return out


def default_passes(device_type: str) -> int:
    """TTA passes when none are configured: on for CUDA, off for CPU (where every pass costs about a whole
    request; bench/README.md)."""
    return DEFAULT_GPU_PASSES if device_type == "cuda" else 0


# --- settings stored with the weights -------------------------------------------------------------------------
class IntervalScale(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    q: float | None = Field(None, gt=0, description="conformal quantile of the normalised error; None: normal")
    q_below: float | None = Field(None, ge=0, description="quantile of (estimate - truth) / s, lower side; None: q")
    q_above: float | None = Field(None, ge=0, description="quantile of (truth - estimate) / s, upper side; None: q")
    fitted_on: str | None = None
    n: int | None = None


class UncertaintySettings(BaseModel):
    """The ``"uncertainty"`` block of a weights manifest (every part optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    level: float = Field(0.9, gt=0, lt=1, description="nominal coverage of the intervals")
    volume: IntervalScale = Field(default_factory=IntervalScale)
    probability: IntervalScale = Field(default_factory=IntervalScale)
    max_probability_width: float = Field(0.4, gt=0, description="abstain above this probability interval width")
    max_volume_width_rel: float = Field(0.6, gt=0, description="abstain above this volume width / volume ...")
    max_volume_width_ml: float = Field(6.0, gt=0, description="... and above this width, mL")
    limits_fitted_on: str | None = Field(None, description="how the width limits were fitted, where they were")
    image_statistics: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="name -> [low, high] range seen on the training cohort (HU, fraction)")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any] | None) -> UncertaintySettings:
        block = manifest.get(MANIFEST_KEY) if isinstance(manifest, Mapping) else None
        return cls() if block is None else cls.model_validate(block)

    def quantile(self, scale: IntervalScale) -> float:
        if scale.q is not None:
            return scale.q
        from scipy.stats import norm

        return float(norm.ppf(0.5 + self.level / 2.0))

    def sides(self, scale: IntervalScale) -> tuple[float, float]:
        """The multiples of the normalising scale below and above the estimate (one-sided quantiles where fitted,
        else the symmetric quantile on both sides)."""
        q = self.quantile(scale)
        return (q if scale.q_below is None else scale.q_below, q if scale.q_above is None else scale.q_above)


# --- intervals ------------------------------------------------------------------------------------------------
def _logit(p: float) -> float:
    q = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(q / (1 - q))


def volume_scale(estimate_ml: float, samples_ml: Sequence[float]) -> float:
    """Normalising scale (mL) of the volume interval: TTA SD + 5 % of the estimate + 0.1 mL."""
    sd = float(np.std(samples_ml, ddof=1)) if len(samples_ml) > 1 else 0.0
    return sd + VOLUME_REL_FLOOR * estimate_ml + VOLUME_ABS_FLOOR_ML


def probability_scale(samples: Sequence[float]) -> float:
    """Normalising scale (logit units) of the probability interval: TTA SD of the logits + 0.1."""
    logits = [_logit(p) for p in samples]
    return (float(np.std(logits, ddof=1)) if len(logits) > 1 else 0.0) + LOGIT_FLOOR


def interval(kind: str, estimate: float, samples: Sequence[float], settings: UncertaintySettings
             ) -> tuple[float, float]:
    """``kind`` "volume" (mL, clipped at 0) or "probability" (0-1, via logits): ``estimate - q_below s`` to
    ``estimate + q_above s`` (module docstring), ``s`` from the TTA ``samples``; rounded for the answer."""
    if kind == "volume":
        lo, hi = interval_from_scale("volume", estimate, volume_scale(estimate, samples), settings)
        return (round(lo, 4), round(hi, 4))
    lo, hi = interval_from_scale("probability", estimate, probability_scale(samples), settings)
    return (round(lo, 6), round(hi, 6))


def interval_from_scale(kind: str, estimate: float, scale: float, settings: UncertaintySettings
                        ) -> tuple[float, float]:
    """:func:`interval` from the normalising scale ``scale`` (mL for the volume, logits for the probability)."""
    if kind == "volume":
        below, above = settings.sides(settings.volume)
        return (max(0.0, estimate - below * scale), estimate + above * scale)
    below, above = settings.sides(settings.probability)
    centre = _logit(estimate)
    lo, hi = (1.0 / (1.0 + math.exp(-(centre + k))) for k in (-below * scale, above * scale))
    return (lo, hi)


# --- image statistics and abstention ------------------------------------------------------------------------
def image_statistics(hu_zyx: np.ndarray) -> dict[str, float]:
    """Statistics of the analysis image compared with the training range (every 4th voxel in-plane): soft-tissue
    (-15 to 100 HU) median and 5th / 95th percentiles (HU), and the bone share (> 300 HU) of the head (> -200 HU)."""
    sample = np.asarray(hu_zyx[:, ::4, ::4], dtype=np.float32)
    head = sample > -200
    soft = sample[(sample >= -15) & (sample <= 100)]
    if soft.size < 100 or not head.any():
        return {}
    p5, p50, p95 = (float(v) for v in np.percentile(soft, (5, 50, 95)))
    return {"soft_tissue_median_hu": round(p50, 2), "soft_tissue_p5_hu": round(p5, 2),
            "soft_tissue_p95_hu": round(p95, 2),
            "bone_fraction": round(float((sample[head] > 300).mean()), 4)}


def abstain_reasons(*, touches_fov_edge: bool, infratentorial: bool, statistics: Mapping[str, float],
                    probability_interval: tuple[float, float] | None, volume_interval: tuple[float, float] | None,
                    volume_ml: float, settings: UncertaintySettings) -> list[str]:
    """The :class:`~app.errors.AbstainReason` values that apply, in the enum's order."""
    reasons = []
    if touches_fov_edge:
        reasons.append(AbstainReason.MASK_AT_FOV_EDGE)
    wide = probability_interval is not None and \
        probability_interval[1] - probability_interval[0] > settings.max_probability_width
    if volume_interval is not None:
        width = volume_interval[1] - volume_interval[0]
        wide = wide or (width > settings.max_volume_width_ml and width > settings.max_volume_width_rel * volume_ml)
    if wide:
        reasons.append(AbstainReason.INTERVAL_TOO_WIDE)
    if infratentorial:
        reasons.append(AbstainReason.INFRATENTORIAL)
    for name, (lo, hi) in settings.image_statistics.items():
        value = statistics.get(name)
        if value is not None and not lo <= value <= hi:
            reasons.append(AbstainReason.IMAGE_STATISTICS_OUT_OF_RANGE)
            break
    return [str(r) for r in reasons]


# --- the predictor's hook -------------------------------------------------------------------------------------
def measure_pass(predictor: Any, series: Any, prepared: Any, prob_map: np.ndarray,
                 network_probability: float) -> tuple[float, float | None]:
    """Volume (mL) and calibrated expansion probability of one TTA pass (``prob_map``: model grid), measured
    like the primary pass of :meth:`app.inference.Predictor.finish` (probability None when the pass's mask fails
    the detection rule)."""
    from app.preprocessing import probabilities_to_reference

    prob_ref = probabilities_to_reference(prob_map, prepared.grid, series.image)
    measured = predictor.measure(series, prob_ref, network_probability, prepared.brain_centroid_lps)
    if not measured.detected:
        return 0.0, None
    return measured.segmented_ml, measured.probability


def add_uncertainty(predictor: Any, series: Any, prepared: Any, raw: Any, result: Any) -> None:
    """Set on ``result`` (a :class:`~app.inference.PredictionResult`): the TTA intervals (when ``raw.tta`` holds
    passes and a haematoma was detected), the image statistics and the abstention reasons."""
    settings: UncertaintySettings = predictor.uncertainty
    result.tta_passes = len(raw.tta)
    result.image_statistics = image_statistics(series.hu_array)
    if raw.tta and result.detected and result.probability is not None:
        volumes, probabilities = [result.volume_ml], [result.probability]
        for prob_map, network_probability in raw.tta:
            volume, probability = measure_pass(predictor, series, prepared, prob_map, network_probability)
            volumes.append(volume)
            if probability is not None:
                probabilities.append(probability)
        result.volume_interval_ml = interval("volume", result.volume_ml, volumes, settings)
        result.probability_interval = interval("probability", result.probability, probabilities, settings)
    result.abstain_reasons = abstain_reasons(
        touches_fov_edge=result.touches_fov_edge, infratentorial=result.infratentorial,
        statistics=result.image_statistics, probability_interval=result.probability_interval,
        volume_interval=result.volume_interval_ml, volume_ml=result.volume_ml, settings=settings)
