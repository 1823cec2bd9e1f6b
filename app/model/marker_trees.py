"""A marker's probability from gradient-boosted regression trees over the clot measurements.

A logistic regression adds the measurements' effects; a marker often shows only where two of them meet (a dark
focus that is deep *and* large is a hypodensity, a dark focus at the margin is not; a notch of the margin is a
focal irregularity only when the clot is not merely clipped by the ventricle). Boosted trees read such
interactions. Each tree is stored as flat node arrays (node 0 is the root)::

    node i:  leaf        -> value[i] (a raw score)
             split       -> left[i] when x[feature[i]] <= threshold[i], else right[i]

    raw = baseline + sum over trees of the leaf reached;   p_marker = sigmoid(raw)

which is how scikit-learn's ``HistGradientBoostingClassifier`` (binary log-loss) scores a case without missing
values (the measurements never are: an empty mask measures zeros). The export from a fitted classifier and the
fit live in ``model_training.marker_reader_fit``; the marker is present when ``p_marker >= threshold``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class RegressionTree(BaseModel):
    """One tree as flat node arrays (module docstring); ``feature`` is -1 at a leaf."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    value: tuple[float, ...]

    @model_validator(mode="after")
    def _consistent(self) -> RegressionTree:
        n = len(self.feature)
        if n == 0 or not (len(self.threshold) == len(self.left) == len(self.right) == len(self.value) == n):
            raise ValueError("regression tree: feature, threshold, left, right and value must align")
        for i, f in enumerate(self.feature):
            if f >= 0 and not (i < self.left[i] < n and i < self.right[i] < n):
                raise ValueError(f"regression tree: node {i} points outside the tree or backwards")
        return self

    def score(self, x: np.ndarray) -> float:
        """The raw score of the leaf that ``x`` (the model's feature vector) reaches."""
        i = 0
        while self.feature[i] >= 0:
            i = self.left[i] if x[self.feature[i]] <= self.threshold[i] else self.right[i]
        return self.value[i]


class BoostedTreesModel(BaseModel):
    """One marker's boosted trees (module docstring) and its decision threshold on the probability."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["boosted_trees"] = "boosted_trees"
    feature_names: tuple[str, ...]
    baseline: float
    trees: tuple[RegressionTree, ...] = Field(min_length=1)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _features_in_range(self) -> BoostedTreesModel:
        from app.model.marker_reader import READER_INPUTS

        unknown = set(self.feature_names) - set(READER_INPUTS)
        if unknown:
            raise ValueError(f"marker reader: unknown measurement(s) {sorted(unknown)}")
        n = len(self.feature_names)
        if any(f >= n for tree in self.trees for f in tree.feature):
            raise ValueError("marker reader: a tree splits on a feature index beyond feature_names")
        return self

    def probability(self, features: Mapping[str, float]) -> float:
        """The marker's probability (0-1) from the clot measurements (all of ``feature_names`` present)."""
        x = np.array([float(features[k]) for k in self.feature_names])
        raw = self.baseline + sum(tree.score(x) for tree in self.trees)
        return float(np.exp(-np.logaddexp(0.0, -raw)))
