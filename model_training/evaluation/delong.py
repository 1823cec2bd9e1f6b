"""DeLong's nonparametric AUC variance and covariance, computed with the fast algorithm of Sun & Xu.

References
----------
* DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more correlated receiver
  operating characteristic curves: a nonparametric approach. Biometrics 1988;44:837-845.
* Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
  operating characteristic curves. IEEE Signal Processing Letters 2014;21(11):1389-1393.
* Robin X et al. pROC: an open-source package for R and S+ to analyze and compare ROC curves.
  BMC Bioinformatics 2011;12:77 (the reference implementation these functions reproduce).

Conventions
-----------
* ``y`` holds 1 for cases (positives) and 0 for controls. A *score* is larger for cases ("controls < cases",
  pROC's ``direction = "<"``); use :func:`resolve_direction` / :func:`oriented` for the opposite direction.
* Ties count one half, exactly as pROC: the AUC is the Mann-Whitney statistic
  ``P(case > control) + 0.5 P(case == control)``, computed with midranks.
* Variances use the unbiased (n - 1) sample covariance of the placement values, as pROC does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy.stats import norm, rankdata

Direction = Literal["<", ">"]
DirectionSetting = Literal["auto", "higher", "lower"]


@dataclass(frozen=True)
class DeLongResult:
    """AUCs of ``k`` scores on the same subjects and their DeLong covariance matrix.

    ``case_placements[i, j]`` is, for score ``i`` and case ``j``, the fraction of controls scoring below the
    case (ties one half): pROC's ``X``. ``control_placements[i, j]`` is the fraction of cases scoring above
    control ``j`` (ties one half): pROC's ``Y``. Cases and controls keep their input order.
    """

    aucs: np.ndarray  # (k,)
    covariance: np.ndarray  # (k, k)
    case_placements: np.ndarray  # (k, n_cases)
    control_placements: np.ndarray  # (k, n_controls)
    n_cases: int
    n_controls: int

    @property
    def variances(self) -> np.ndarray:
        return np.diag(self.covariance).copy()


class AucCI(NamedTuple):
    """An AUC with its DeLong variance and normal-approximation confidence interval (clipped to [0, 1])."""

    auc: float
    variance: float
    lower: float
    upper: float
    confidence_level: float


class PairedDeLongTest(NamedTuple):
    """Two-sided paired DeLong test of ``auc1 == auc2`` (the fields pROC's ``roc.test`` reports)."""

    auc1: float
    auc2: float
    diff: float  # auc1 - auc2
    z: float
    p: float  # two-sided


@dataclass(frozen=True)
class PairedDeLongDetail:
    """The paired test plus the variance of the difference and its confidence interval."""

    auc1: float
    auc2: float
    diff: float
    variance_diff: float
    z: float
    p: float
    ci_lower: float
    ci_upper: float
    confidence_level: float
    note: str | None = None

    def as_test(self) -> PairedDeLongTest:
        return PairedDeLongTest(self.auc1, self.auc2, self.diff, self.z, self.p)


def _validate(y: np.ndarray | Sequence[int], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise ValueError("y must be one-dimensional")
    if not np.isin(y_arr, (0, 1)).all():
        raise ValueError("y must contain only 0 (control) and 1 (case)")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[np.newaxis, :]
    if s.ndim != 2 or s.shape[1] != y_arr.shape[0]:
        raise ValueError(f"scores must have shape (n,) or (k, n) with n = {y_arr.shape[0]}, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (drop missing values before calling)")
    n_cases = int((y_arr == 1).sum())
    n_controls = int((y_arr == 0).sum())
    if n_cases == 0 or n_controls == 0:
        raise ValueError(f"AUC needs cases and controls; got {n_cases} cases and {n_controls} controls")
    return y_arr.astype(bool), s


def fast_delong(y: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> DeLongResult:
    """AUCs and DeLong covariance of one score ``(n,)`` or several correlated scores ``(k, n)``.

    Sun & Xu's algorithm: with ``m`` cases and ``n`` controls, the midranks of every score within the cases
    (``tx``), within the controls (``ty``) and within all subjects (``tz``) give

    * ``AUC = (mean(tz[cases]) - (m + 1) / 2) / n``,
    * case placements ``V10 = (tz[cases] - tx) / n`` and control placements ``V01 = 1 - (tz[controls] - ty) / m``,
    * ``S = cov(V10) / m + cov(V01) / n``.

    Cost ``O(k n log n)``. Raises ``ValueError`` when there are no cases or no controls.
    """
    is_case, s = _validate(y, np.asarray(scores, dtype=np.float64))
    cases = s[:, is_case]
    controls = s[:, ~is_case]
    m = cases.shape[1]
    n = controls.shape[1]
    tx = rankdata(cases, axis=1)  # midranks ("average") by default
    ty = rankdata(controls, axis=1)
    tz = rankdata(np.concatenate([cases, controls], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1.0) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    k = s.shape[0]
    sx = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((k, k))
    sy = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((k, k))
    covariance = sx / m + sy / n
    return DeLongResult(
        aucs=aucs,
        covariance=covariance,
        case_placements=v10,
        control_placements=v01,
        n_cases=m,
        n_controls=n,
    )


def resolve_direction(
    y: np.ndarray | Sequence[int], score: np.ndarray | Sequence[float], setting: DirectionSetting = "auto"
) -> Direction:
    """pROC's direction: ``"<"`` (controls < cases, higher = positive) or ``">"``.

    ``"auto"`` follows pROC's ``roc()``: ``"<"`` when ``median(controls) <= median(cases)``, else ``">"``.
    Note that "auto" chooses the direction from the data being evaluated, which biases the AUC upwards;
    fix the direction whenever it is known in advance.
    """
    if setting == "higher":
        return "<"
    if setting == "lower":
        return ">"
    if setting != "auto":
        raise ValueError(f"direction must be 'auto', 'higher' or 'lower', not {setting!r}")
    y_arr = np.asarray(y)
    s = np.asarray(score, dtype=np.float64)
    if not (y_arr == 1).any() or not (y_arr == 0).any():
        raise ValueError("direction 'auto' needs both cases and controls")
    return "<" if np.median(s[y_arr == 0]) <= np.median(s[y_arr == 1]) else ">"


def oriented(score: np.ndarray | Sequence[float], direction: Direction) -> np.ndarray:
    """The score as "higher = case": unchanged for ``"<"``, negated for ``">"``."""
    s = np.asarray(score, dtype=np.float64)
    if direction == "<":
        return s
    if direction == ">":
        return -s
    raise ValueError(f"direction must be '<' or '>', not {direction!r}")


def auc_ci(y: np.ndarray | Sequence[int], score: np.ndarray | Sequence[float], alpha: float = 0.05) -> AucCI:
    """AUC with pROC's DeLong confidence interval (``ci.auc(method = "delong")``).

    The interval is ``AUC +/- z_{1 - alpha/2} * sqrt(var_DeLong)`` on the AUC scale, clipped to [0, 1].
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    res = fast_delong(y, score)
    auc = float(res.aucs[0])
    var = float(res.covariance[0, 0])
    half = float(norm.ppf(1.0 - alpha / 2.0)) * float(np.sqrt(max(var, 0.0)))
    return AucCI(
        auc=auc,
        variance=var,
        lower=max(0.0, auc - half),
        upper=min(1.0, auc + half),
        confidence_level=1.0 - alpha,
    )


# Below this the variance of the difference is treated as zero (two exactly degenerate ROC curves).
_ZERO_VARIANCE = 1e-15


def paired_delong(
    y: np.ndarray | Sequence[int],
    s1: np.ndarray | Sequence[float],
    s2: np.ndarray | Sequence[float],
    alpha: float = 0.05,
) -> PairedDeLongDetail:
    """Paired DeLong test of two scores on the same subjects, as pROC's ``roc.test(method = "delong")``.

    ``z = (AUC1 - AUC2) / sqrt(var1 + var2 - 2 cov12)``, two-sided ``p = 2 * Phi(-|z|)``, and the confidence
    interval of the difference ``diff +/- z_{1 - alpha/2} * sqrt(var_diff)``.

    Degenerate cases: identical AUCs give ``z = 0, p = 1`` (as pROC); a non-zero difference with zero
    variance (e.g. a perfect score against a constant one) has no DeLong test: ``z`` and ``p`` are NaN and
    ``note`` says why.
    """
    res = fast_delong(y, np.vstack([np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)]))
    auc1, auc2 = (float(a) for a in res.aucs)
    diff = auc1 - auc2
    c = res.covariance
    var_diff = float(c[0, 0] + c[1, 1] - 2.0 * c[0, 1])
    zq = float(norm.ppf(1.0 - alpha / 2.0))
    note = None
    if var_diff <= _ZERO_VARIANCE:
        var_diff = max(var_diff, 0.0)
        if diff == 0.0:
            z, p = 0.0, 1.0
        else:
            z, p = float("nan"), float("nan")
            note = "the variance of the AUC difference is zero: the DeLong test is undefined"
    else:
        z = diff / float(np.sqrt(var_diff))
        p = float(2.0 * norm.sf(abs(z)))
    half = zq * float(np.sqrt(var_diff))
    return PairedDeLongDetail(
        auc1=auc1,
        auc2=auc2,
        diff=diff,
        variance_diff=var_diff,
        z=z,
        p=p,
        ci_lower=diff - half,
        ci_upper=diff + half,
        confidence_level=1.0 - alpha,
        note=note,
    )


def paired_delong_test(
    y: np.ndarray | Sequence[int], s1: np.ndarray | Sequence[float], s2: np.ndarray | Sequence[float]
) -> PairedDeLongTest:
    """``(auc1, auc2, diff, z, p)`` of the two-sided paired DeLong test; see :func:`paired_delong`."""
    return paired_delong(y, s1, s2).as_test()
