"""The paper's comparators of the CNN: the BAT score, univariate logistic models, and binary NCCT markers.

* BAT score (Morotti et al., Stroke 2018; the paper's Supplemental Table 3): blend sign present 1 point, any
  hypodensity present 2 points, onset-to-NCCT time < 2.5 h 2 points (range 0-5).
* Univariate logistic regression, unpenalised, on the baseline haematoma volume (mL) and on the BAT score,
  fitted on the training rows and applied to the test rows; its score is the predicted probability of
  expansion.
* A binary NCCT marker's score is its 0/1 value (1 = present).

Missing inputs are NaN; rows with a missing input are left out of the fit, and their test score is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from model_training.evaluation.serialization import column, to_float
from model_training.ncct_markers import NCCT_MARKERS

__all__ = [
    "MARKERS",
    "UnivariateLogisticModel",
    "bat_score",
    "bat_scores",
    "column",
    "markers_in",
    "to_float",
]

MARKERS: tuple[str, ...] = NCCT_MARKERS
BAT_ONSET_CUTOFF_HOURS = 2.5


def bat_score(blend: float, hypodensity: float, onset_to_ct_hours: float) -> float:
    """BAT points from the blend sign (0/1), any hypodensity (0/1) and onset-to-CT time (hours).

    Returns NaN when any input is missing (NaN). Marker values other than 0/1 raise ``ValueError``.
    """
    if math.isnan(blend) or math.isnan(hypodensity) or math.isnan(onset_to_ct_hours):
        return math.nan
    for name, v in (("blend", blend), ("hypodensity", hypodensity)):
        if v not in (0.0, 1.0):
            raise ValueError(f"{name} must be 0 or 1, got {v}")
    if onset_to_ct_hours < 0.0:
        raise ValueError(f"onset-to-CT time must be >= 0 h, got {onset_to_ct_hours}")
    return 1.0 * blend + 2.0 * hypodensity + (2.0 if onset_to_ct_hours < BAT_ONSET_CUTOFF_HOURS else 0.0)


def bat_scores(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """BAT score of every row (NaN where blend, hypodensity or onset time is missing)."""
    return np.array(
        [
            bat_score(
                to_float(r.get("blend")), to_float(r.get("hypodensity")), to_float(r.get("onset_to_ct_hours"))
            )
            for r in rows
        ],
        dtype=np.float64,
    )


@dataclass
class UnivariateLogisticModel:
    """Unpenalised logistic regression of the label on one predictor (standardised for the solver only).

    scikit-learn >= 1.8 deprecates ``penalty=None``; ``C=inf`` is the documented equivalent.
    """

    name: str
    pipeline: Pipeline
    n_train: int
    coefficient: float  # log-odds per unit of the (unstandardised) predictor
    intercept: float  # log-odds at predictor 0

    @classmethod
    def fit(cls, name: str, x: np.ndarray, y: np.ndarray) -> UnivariateLogisticModel:
        """Fit on the rows where ``x`` is finite. Raises ``ValueError`` without both classes."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y)
        keep = np.isfinite(x)
        xk, yk = x[keep], y[keep].astype(int)
        if len(np.unique(yk)) < 2:
            raise ValueError(f"{name}: the training rows need both classes to fit a logistic model")
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000))
        pipe.fit(xk[:, np.newaxis], yk)
        scaler: StandardScaler = pipe[0]
        lr: LogisticRegression = pipe[-1]
        scale = float(scaler.scale_[0])
        coef = float(lr.coef_[0, 0]) / scale
        intercept = float(lr.intercept_[0]) - coef * float(scaler.mean_[0])
        return cls(name=name, pipeline=pipe, n_train=int(keep.sum()), coefficient=coef, intercept=intercept)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of expansion for each value of ``x``; NaN where ``x`` is missing."""
        x = np.asarray(x, dtype=np.float64)
        out = np.full(x.shape, np.nan)
        keep = np.isfinite(x)
        if keep.any():
            out[keep] = self.pipeline.predict_proba(x[keep][:, np.newaxis])[:, 1]
        return out

    def describe(self) -> dict[str, float | int | str]:
        return {
            "name": self.name,
            "n_train": self.n_train,
            "coefficient_per_unit": self.coefficient,
            "intercept": self.intercept,
            "odds_ratio_per_unit": math.exp(self.coefficient) if abs(self.coefficient) < 700 else math.inf,
        }


def markers_in(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The markers (in the paper's order) that have at least one non-empty value in ``rows``."""
    return [m for m in MARKERS if np.isfinite(column(rows, m)).any()]
