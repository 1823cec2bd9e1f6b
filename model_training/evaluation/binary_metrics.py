"""Sensitivity, specificity and likelihood ratios of a dichotomised score, with confidence intervals.

Conventions: ``y`` is 1 for a case (haematoma expansion) and 0 for a control; a score is "higher = case" and a
subject is called positive when ``score >= threshold``. Proportions are fractions in [0, 1].

Confidence intervals
--------------------
* Proportions: Wilson score interval (default), Wilson with continuity correction (``"wilson_cc"``, R's
  ``prop.test`` default; the paper's Table 2 sensitivity/specificity intervals match this one) or
  Clopper-Pearson ``"exact"``, all from ``scipy.stats.binomtest(k, n).proportion_ci``.
* Likelihood ratios: the log method of Simel, Samsa & Matchar (J Clin Epidemiol 1991;44:763-770):
  ``SE(ln LR+) = sqrt(1/TP - 1/(TP+FN) + 1/FP - 1/(FP+TN))`` and
  ``SE(ln LR-) = sqrt(1/FN - 1/(TP+FN) + 1/TN - 1/(TN+FP))``. No continuity correction is applied; when a
  cell is zero the ratio is 0 or infinite and its interval is undefined (NaN, with a note).
* "Weighted by prevalence" (the paper's Table 2): the ratio multiplied by the pre-test odds
  ``prevalence / (1 - prevalence)`` of the evaluated set, i.e. the post-test odds. For LR+ this equals TP/FP
  and for LR- it equals FN/TN. Its interval is the standard interval times the same odds (the prevalence is
  treated as fixed, as the paper does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import binomtest, norm

CIMethod = Literal["wilson", "wilson_cc", "exact"]
_SCIPY_METHOD = {"wilson": "wilson", "wilson_cc": "wilsoncc", "exact": "exact"}

# Youden's J values closer than this are treated as tied (J is a difference of ratios of small integers).
_J_TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval; NaN where undefined."""

    estimate: float
    lower: float
    upper: float

    def scaled(self, factor: float) -> Interval:
        return Interval(self.estimate * factor, self.lower * factor, self.upper * factor)


@dataclass(frozen=True)
class YoudenThreshold:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 on the data it was chosen on."""

    threshold: float
    youden_j: float
    sensitivity: float
    specificity: float
    n_tied: int  # how many candidate thresholds reached the maximal J


@dataclass(frozen=True)
class BinaryMetrics:
    """Confusion counts and derived statistics of ``score >= threshold`` on one data set."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Interval
    specificity: Interval
    lr_positive: Interval
    lr_negative: Interval
    prevalence: float
    pretest_odds: float
    lr_positive_weighted: Interval
    lr_negative_weighted: Interval
    ci_method: CIMethod
    confidence_level: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _labels_and_scores(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """``y`` and ``score`` as 1-D arrays of equal length (scores float64, all finite); ValueError otherwise."""
    y_arr = np.asarray(y)
    s = np.asarray(score, dtype=np.float64)
    if y_arr.shape != s.shape or y_arr.ndim != 1:
        raise ValueError("y and score must be one-dimensional and of equal length")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y_arr, s


def youden_threshold(y: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray) -> YoudenThreshold:
    """Choose the cut-off maximising Youden's J on (training) data; apply it unchanged to the test set.

    Candidate thresholds are the midpoints between consecutive distinct scores (as pROC's ``coords``), so the
    cut-off falls between two training values rather than on one, plus one threshold below the minimum (all
    positive) and one above the maximum (all negative). A subject is positive when ``score >= threshold``.

    Ties: when several thresholds reach the same maximal J (within 1e-12), the lowest one is taken, i.e. the
    one with the highest sensitivity: in expansion screening a missed expansion costs more than a false
    alarm. ``n_tied`` reports how many thresholds tied.

    Raises ``ValueError`` when ``y`` lacks cases or controls or a score is not finite.
    """
    y_arr, s = _labels_and_scores(y, score)
    n_pos = int((y_arr == 1).sum())
    n_neg = int((y_arr == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"Youden's threshold needs cases and controls; got {n_pos} and {n_neg}")
    values = np.unique(s)
    span = float(values[-1] - values[0]) or 1.0
    candidates = np.concatenate(
        [[values[0] - span], (values[:-1] + values[1:]) / 2.0, [values[-1] + span]]
    )  # ascending
    positive = s[np.newaxis, :] >= candidates[:, np.newaxis]  # (thresholds, n)
    sens = (positive & (y_arr == 1)).sum(axis=1) / n_pos
    spec = (~positive & (y_arr == 0)).sum(axis=1) / n_neg
    j = sens + spec - 1.0
    best = j.max()
    tied = np.flatnonzero(j >= best - _J_TIE_TOLERANCE)
    i = int(tied[0])  # lowest threshold = highest sensitivity
    return YoudenThreshold(
        threshold=float(candidates[i]),
        youden_j=float(j[i]),
        sensitivity=float(sens[i]),
        specificity=float(spec[i]),
        n_tied=int(tied.size),
    )


def proportion_ci(k: int, n: int, method: CIMethod = "wilson", alpha: float = 0.05) -> Interval:
    """``k / n`` with a Wilson, continuity-corrected Wilson or Clopper-Pearson exact interval; NaN if n = 0."""
    if method not in _SCIPY_METHOD:
        raise ValueError(f"method must be one of {sorted(_SCIPY_METHOD)}, not {method!r}")
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=1.0 - alpha, method=_SCIPY_METHOD[method])
    return Interval(k / n, float(ci.low), float(ci.high))


def _log_ci(ratio: float, se_log: float, z: float) -> tuple[float, float]:
    if not (math.isfinite(ratio) and ratio > 0.0 and math.isfinite(se_log)):
        return math.nan, math.nan
    return ratio * math.exp(-z * se_log), ratio * math.exp(z * se_log)


def likelihood_ratios(
    tp: int, fp: int, tn: int, fn: int, alpha: float = 0.05
) -> tuple[Interval, Interval, list[str]]:
    """``(LR+, LR-, notes)`` with log-method (Simel et al. 1991) confidence intervals.

    ``LR+ = sens / (1 - spec)``, ``LR- = (1 - sens) / spec``. Zero cells give 0 or infinite ratios with NaN
    intervals; a missing class gives NaN everywhere. ``notes`` explains every NaN or infinity.
    """
    notes: list[str] = []
    n_pos, n_neg = tp + fn, fp + tn
    z = float(norm.ppf(1.0 - alpha / 2.0))
    if n_pos == 0 or n_neg == 0:
        notes.append("likelihood ratios need cases and controls")
        nan = Interval(math.nan, math.nan, math.nan)
        return nan, nan, notes
    sens, spec = tp / n_pos, tn / n_neg

    def ratio(num: float, den: float) -> float:
        if den == 0.0:
            return math.inf if num > 0.0 else math.nan
        return num / den

    lr_pos = ratio(sens, 1.0 - spec)
    lr_neg = ratio(1.0 - sens, spec)
    se_pos = math.sqrt(1 / tp - 1 / n_pos + 1 / fp - 1 / n_neg) if tp > 0 and fp > 0 else math.nan
    se_neg = math.sqrt(1 / fn - 1 / n_pos + 1 / tn - 1 / n_neg) if fn > 0 and tn > 0 else math.nan
    if tp == 0 or fp == 0:
        notes.append(f"LR+ confidence interval undefined (TP = {tp}, FP = {fp}: a zero cell)")
    if fn == 0 or tn == 0:
        notes.append(f"LR- confidence interval undefined (FN = {fn}, TN = {tn}: a zero cell)")
    return (
        Interval(lr_pos, *_log_ci(lr_pos, se_pos, z)),
        Interval(lr_neg, *_log_ci(lr_neg, se_neg, z)),
        notes,
    )


def binary_metrics(
    y: Sequence[int] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    threshold: float,
    *,
    ci_method: CIMethod = "wilson",
    alpha: float = 0.05,
) -> BinaryMetrics:
    """Counts, sensitivity, specificity and likelihood ratios (standard and prevalence-weighted) at
    ``score >= threshold``; the prevalence is that of ``y`` (the evaluated, i.e. test, set)."""
    y_arr, s = _labels_and_scores(y, score)
    predicted = s >= threshold
    case = y_arr == 1
    tp = int((predicted & case).sum())
    fp = int((predicted & ~case).sum())
    tn = int((~predicted & ~case).sum())
    fn = int((~predicted & case).sum())
    notes: list[str] = []
    n = tp + fp + tn + fn
    if tp + fn == 0:
        notes.append("no cases in the evaluated set: sensitivity undefined")
    if fp + tn == 0:
        notes.append("no controls in the evaluated set: specificity undefined")
    lr_pos, lr_neg, lr_notes = likelihood_ratios(tp, fp, tn, fn, alpha)
    notes.extend(lr_notes)
    prevalence = (tp + fn) / n if n else math.nan
    odds = prevalence / (1.0 - prevalence) if n and prevalence < 1.0 else math.nan
    return BinaryMetrics(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=proportion_ci(tp, tp + fn, ci_method, alpha),
        specificity=proportion_ci(tn, tn + fp, ci_method, alpha),
        lr_positive=lr_pos,
        lr_negative=lr_neg,
        prevalence=prevalence,
        pretest_odds=odds,
        lr_positive_weighted=lr_pos.scaled(odds),
        lr_negative_weighted=lr_neg.scaled(odds),
        ci_method=ci_method,
        confidence_level=1.0 - alpha,
        notes=notes,
    )
