"""Fitting the post-processing settings (:mod:`app.model.postprocessing`) on validation data.

Used by the training package before registration; numpy/scipy only (no torch), deterministic:

* :func:`fit_platt`: Platt scaling of the raw expansion probabilities, i.e. a logistic regression of the labels
  on ``logit(p_raw)``, unpenalised but with Platt's smoothed targets (``(N+ + 1) / (N+ + 2)`` for positives,
  ``1 / (N- + 2)`` for negatives), so the optimum is finite even when the classes are separable;
* :func:`fit_detection`: the detection rule with the highest sensitivity on cases with a haematoma among those
  that detect at most ``max_false_positive_rate`` of the haematoma-free cases; ties go to the smallest
  ``min_volume_ml`` (mL), then the smallest ``min_mean_probability``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize

from app.model.postprocessing import DetectionRule, logit, sigmoid

#: candidate ``min_volume_ml`` values (mL): 0.1 to 5.0 in steps of 0.1
DEFAULT_VOLUME_GRID_ML: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 51))
#: candidate ``min_mean_probability`` values: 0 (off) and 0.55 to 0.95 in steps of 0.05 (the mask is the voxels
#: with probability >= 0.5, so the mean inside it is at least 0.5 and values up to 0.5 are all "off")
DEFAULT_PROBABILITY_GRID: tuple[float, ...] = (0.0, *(round(0.5 + 0.05 * k, 2) for k in range(1, 10)))


def _binary_labels(labels: Sequence[int] | np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(labels).ravel()
    if y.size != n:
        raise ValueError(f"{name} has {y.size} values for {n} cases")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name} must be 0/1 (or booleans)")
    return y.astype(np.int64)


def fit_platt(raw_probabilities: Sequence[float] | np.ndarray,
              labels: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` such that ``sigmoid(slope * logit(p_raw) + intercept)`` is calibrated on these
    cases (see the module docstring). ``raw_probabilities`` in [0, 1]; ``labels`` 0/1 with both classes
    present. Raises ``ValueError`` for unusable data, including a non-positive fitted slope (the raw
    probabilities rank the cases the wrong way round, so a monotone calibration cannot be fitted)."""
    p = np.asarray(raw_probabilities, dtype=np.float64).ravel()
    if p.size < 2 or not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("raw_probabilities must be at least two finite values in [0, 1]")
    y = _binary_labels(labels, p.size, "labels")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Platt scaling needs both classes (expansion and no expansion)")
    x = logit(p)
    if float(np.ptp(x)) == 0.0:
        raise ValueError("all raw probabilities are equal; the slope is undetermined")
    target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * x + theta[1]
        loss = float(np.sum(np.logaddexp(0.0, z) - target * z))
        r = sigmoid(z) - target
        return loss, np.array([float(np.dot(r, x)), float(r.sum())])

    def hessian(theta: np.ndarray) -> np.ndarray:
        s = sigmoid(theta[0] * x + theta[1])
        w = s * (1.0 - s)
        return np.array([[np.dot(w, x * x), np.dot(w, x)], [np.dot(w, x), w.sum()]])

    result = minimize(loss_and_grad, np.array([1.0, 0.0]), jac=True, hess=hessian, method="trust-exact",
                      options={"gtol": 1e-10, "maxiter": 500})
    slope, intercept = float(result.x[0]), float(result.x[1])
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise ValueError("Platt scaling did not converge to finite values")
    if slope <= 0.0:
        raise ValueError(f"the fitted Platt slope is {slope:.4g} <= 0: the raw probabilities do not rank "
                         "expansion above no expansion on these cases")
    return slope, intercept


def fit_detection(
    volumes_ml: Sequence[float] | np.ndarray,
    mean_probs: Sequence[float] | np.ndarray,
    has_ich: Sequence[int] | np.ndarray,
    *,
    max_false_positive_rate: float = 0.05,
    volume_grid_ml: Sequence[float] = DEFAULT_VOLUME_GRID_ML,
    probability_grid: Sequence[float] = DEFAULT_PROBABILITY_GRID,
    fitted_on: str = "validation",
) -> DetectionRule:
    """The detection rule chosen on validation cases (see the module docstring).

    Args:
        volumes_ml: per case, the volume (mL, analysis grid) of the thresholded mask *before* any detection
            rule (``PredictionResult.segmented_volume_ml``); 0 for an empty mask.
        mean_probs: per case, the mean haematoma probability inside that mask (0 for an empty mask).
        has_ich: per case, 1 when the case has a haematoma, 0 when it is haematoma-free; both must occur.
        max_false_positive_rate: the largest fraction of haematoma-free cases the rule may detect.
        volume_grid_ml, probability_grid: the candidate ``min_volume_ml`` (mL, > 0) and
            ``min_mean_probability`` values.
        fitted_on: free text prefix for the rule's ``fitted_on`` (the achieved rates are appended).

    Raises:
        ValueError: inconsistent inputs, a class missing, or no candidate meeting the false-positive limit.
    """
    volumes = np.asarray(volumes_ml, dtype=np.float64).ravel()
    probs = np.asarray(mean_probs, dtype=np.float64).ravel()
    if volumes.size != probs.size or volumes.size == 0:
        raise ValueError(f"volumes_ml ({volumes.size}) and mean_probs ({probs.size}) must be non-empty and aligned")
    if not (np.all(np.isfinite(volumes)) and np.all(np.isfinite(probs))) or volumes.min() < 0:
        raise ValueError("volumes_ml must be finite and >= 0, mean_probs finite")
    ich = _binary_labels(has_ich, volumes.size, "has_ich").astype(bool)
    n_ich, n_free = int(ich.sum()), int((~ich).sum())
    if n_ich == 0 or n_free == 0:
        raise ValueError("fitting the detection rule needs cases with and without a haematoma")
    if not 0.0 <= max_false_positive_rate < 1.0:
        raise ValueError("max_false_positive_rate must be in [0, 1)")
    vol_grid = sorted({float(v) for v in volume_grid_ml})
    prob_grid = sorted({float(v) for v in probability_grid})
    if not vol_grid or vol_grid[0] <= 0 or not prob_grid or prob_grid[0] < 0 or prob_grid[-1] > 1:
        raise ValueError("volume_grid_ml must hold values > 0 and probability_grid values in [0, 1]")

    best: tuple[float, float, float, float] | None = None  # (sensitivity, fpr, min_volume, min_prob)
    for min_prob in prob_grid:
        for min_volume in vol_grid:  # ascending: the first feasible volume is the most sensitive at min_prob
            detected = (volumes >= min_volume) & (probs >= min_prob)
            fpr = float(np.count_nonzero(detected & ~ich)) / n_free
            if fpr <= max_false_positive_rate:
                sensitivity = float(np.count_nonzero(detected & ich)) / n_ich
                if best is None or sensitivity > best[0] or (
                        sensitivity == best[0] and (min_volume, min_prob) < (best[2], best[3])):
                    best = (sensitivity, fpr, min_volume, min_prob)
                break
    if best is None:
        raise ValueError(f"no candidate rule detects at most {max_false_positive_rate:.1%} of the {n_free} "
                         "haematoma-free cases; extend volume_grid_ml or probability_grid")
    sensitivity, fpr, min_volume, min_prob = best
    note = (f"{fitted_on}: {n_ich} cases with and {n_free} without haematoma; detects {sensitivity:.1%} of "
            f"haematomas and {fpr:.1%} of haematoma-free cases (limit {max_false_positive_rate:.1%})")
    return DetectionRule(min_volume_ml=min_volume, min_mean_probability=min_prob, fitted_on=note)
