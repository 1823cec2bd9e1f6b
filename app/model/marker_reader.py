"""The learned marker reader: the probability of each of the seven NCCT markers from all the clot measurements.

One threshold on one measurement reads a marker poorly: a swirl, a blend or a fluid level darkens a clot too, and
a hypodense focus is told from heterogeneous mottling by its size and depth, not by its contrast alone. The reader
gives each marker its own logistic regression over every measurement of :mod:`app.model.clot_features`,
:mod:`app.model.ncct_markers` and :mod:`app.model.clot_texture` (standardised inputs)::

    p_marker = sigmoid(intercept + sum_k coefficients[k] * (x_k - means[k]) / scales[k])

and decides the marker present when ``p_marker >= threshold``; a marker may instead be read by boosted trees over
the same measurements (:class:`~app.model.marker_trees.BoostedTreesModel`, which read interactions a sum of
effects cannot). The models and thresholds are fitted on a training cohort's marker truth
(``model_training.marker_reader_fit``: threshold of maximum Cohen's kappa on cross-fitted probabilities) and
stored with the weights under ``postprocessing.marker_reader``. The
probabilities enter the answer's features as ``<marker>_probability`` (:data:`PROBABILITY_FEATURES`), which is
what the expansion model reads.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.model.clot_features import FEATURE_NAMES
from app.model.clot_texture import TEXTURE_UNITS
from app.model.marker_trees import BoostedTreesModel
from app.model.ncct_markers import MEASUREMENT_UNITS, NCCT_MARKERS

#: every measurement a reader may use
READER_INPUTS: tuple[str, ...] = (*FEATURE_NAMES, *MEASUREMENT_UNITS, *TEXTURE_UNITS)
#: marker -> the feature name of its probability
PROBABILITY_FEATURES: dict[str, str] = {name: f"{name}_probability" for name in NCCT_MARKERS}


class MarkerModel(BaseModel):
    """One marker's logistic regression (module docstring) and its decision threshold on the probability."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    feature_names: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    threshold: float = Field(0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> MarkerModel:
        n = len(self.feature_names)
        unknown = set(self.feature_names) - set(READER_INPUTS)
        if unknown:
            raise ValueError(f"marker reader: unknown measurement(s) {sorted(unknown)}")
        if n == 0 or not (len(self.means) == len(self.scales) == len(self.coefficients) == n):
            raise ValueError("marker reader: feature_names, means, scales and coefficients must align")
        if any(s <= 0 for s in self.scales):
            raise ValueError("marker reader: scales must be > 0")
        return self

    def probability(self, features: Mapping[str, float]) -> float:
        """The marker's probability (0-1) from the clot measurements (all of ``feature_names`` present)."""
        z = self.intercept + sum(c * (float(features[k]) - m) / s for k, m, s, c in zip(
            self.feature_names, self.means, self.scales, self.coefficients, strict=True))
        return float(np.exp(-np.logaddexp(0.0, -z)))


class MarkerReader(BaseModel):
    """The seven markers' models (all or none)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    models: dict[str, MarkerModel | BoostedTreesModel]
    fitted_on: str | None = None

    @model_validator(mode="after")
    def _all_markers(self) -> MarkerReader:
        if set(self.models) != set(NCCT_MARKERS):
            raise ValueError(f"marker reader: needs a model for each of {', '.join(NCCT_MARKERS)}")
        return self

    def probabilities(self, features: Mapping[str, float]) -> dict[str, float]:
        """Feature name (:data:`PROBABILITY_FEATURES`) -> probability, rounded to 6 decimals."""
        return {PROBABILITY_FEATURES[name]: round(self.models[name].probability(features), 6)
                for name in NCCT_MARKERS}

    def decide(self, features: Mapping[str, float]) -> dict[str, bool]:
        """Marker -> present, from features that hold the probabilities (:meth:`probabilities`)."""
        return {name: bool(float(features[PROBABILITY_FEATURES[name]]) >= self.models[name].threshold)
                for name in NCCT_MARKERS}
