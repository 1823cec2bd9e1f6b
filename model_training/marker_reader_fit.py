"""Fit the learned marker reader (:mod:`app.model.marker_reader`) and the expansion model on its probabilities,
from serving-path rows of a training cohort with marker truth.

Stage 1, the reader: for each of the seven markers, an L2-penalised logistic regression (``c``, standardised
inputs :data:`app.model.marker_reader.READER_INPUTS`) or gradient-boosted trees (:data:`TREE_SETTINGS`) of the
marker truth on the detected haematomas. Its decision
threshold is the one of maximum Cohen's kappa on *cross-fitted* probabilities (``folds``-fold, stratified, seeded),
so that it holds for cases the regression has not seen.

Stage 2, the expansion model: a logistic regression of the expansion label on the logit of the network's expansion
probability, the log volume and the seven marker probabilities (:data:`EXPANSION_INPUTS`), fitted on the same
cross-fitted probabilities (in-sample probabilities would be over-confident and over-weighted). With
``nonnegative`` (the default) the coefficients of the volume and of the markers are kept >= 0: each is an
established risk factor of expansion (larger haematomas and each NCCT marker raise the risk), and the constraint
keeps the noise of a few hundred labels from flipping a marker's sign. Penalty as scikit-learn's: ``0.5 |w|^2 + c *
sum(log-loss)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.model.clot_features import ExpansionModel
from app.model.marker_reader import PROBABILITY_FEATURES, READER_INPUTS, MarkerModel, MarkerReader
from app.model.marker_trees import BoostedTreesModel, RegressionTree
from app.model.ncct_markers import NCCT_MARKERS

EXPANSION_INPUTS: tuple[str, ...] = ("network_logit", "log_volume_ml", *PROBABILITY_FEATURES.values())
UNCONSTRAINED: frozenset[str] = frozenset({"network_logit"})


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    means, scales = x.mean(0), x.std(0)
    scales[scales < 1e-9] = 1.0
    return means, scales


def _best_kappa_threshold(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import cohen_kappa_score

    candidates = np.unique(np.clip(np.percentile(p, np.linspace(1, 99, 197)), 1e-4, 1 - 1e-4))
    return max((float(cohen_kappa_score(y, p >= t)), float(t)) for t in candidates)


#: the boosted trees' settings (scikit-learn's ``HistGradientBoostingClassifier``), chosen by cross-validated kappa
#: on a revised-generator cohort; see the weights' model card
TREE_SETTINGS: dict[str, float | int] = {"max_iter": 150, "learning_rate": 0.05, "max_leaf_nodes": 6,
                                         "min_samples_leaf": 30, "l2_regularization": 1.0}
READER_KINDS: tuple[str, ...] = ("logistic", "boosted_trees")


def export_trees(estimator: Any) -> tuple[float, tuple[RegressionTree, ...]]:
    """The baseline and the trees of a fitted single-output ``HistGradientBoostingClassifier`` (binary) or
    ``HistGradientBoostingRegressor`` (numerical features, no missing values) as stored node arrays
    (:class:`~app.model.marker_trees.RegressionTree`). It reads the estimator's fitted trees (``_predictors``,
    ``_baseline_prediction``), which scikit-learn does not promise to keep; the tests check the export against
    the estimator's own predictions on new rows, so a scikit-learn that changes them fails there, not silently.
    Served weights do not depend on it: they hold the exported arrays."""
    if getattr(estimator, "n_trees_per_iteration_", 1) != 1:
        raise ValueError("boosted-trees export: only binary classifiers and single-output regressors")
    trees = []
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise ValueError("boosted-trees export: categorical splits are not supported")
        leaf = nodes["is_leaf"].astype(bool)
        trees.append(RegressionTree(
            feature=tuple(int(f) if not lf else -1 for f, lf in zip(nodes["feature_idx"], leaf, strict=True)),
            threshold=tuple(float(t) if not lf else 0.0 for t, lf in zip(nodes["num_threshold"], leaf, strict=True)),
            left=tuple(int(v) if not lf else 0 for v, lf in zip(nodes["left"], leaf, strict=True)),
            right=tuple(int(v) if not lf else 0 for v, lf in zip(nodes["right"], leaf, strict=True)),
            value=tuple(float(v) if lf else 0.0 for v, lf in zip(nodes["value"], leaf, strict=True))))
    return float(np.ravel(estimator._baseline_prediction)[0]), tuple(trees)


def export_boosted_trees(classifier: Any, feature_names: tuple[str, ...], threshold: float) -> BoostedTreesModel:
    """A fitted binary ``HistGradientBoostingClassifier`` as a marker's stored
    :class:`~app.model.marker_trees.BoostedTreesModel` (:func:`export_trees`)."""
    baseline, trees = export_trees(classifier)
    return BoostedTreesModel(feature_names=feature_names, baseline=baseline, trees=trees, threshold=threshold)


def fit_marker_reader(rows: list[dict[str, Any]], cohort: str, c: float = 0.3, folds: int = 5,
                      seed: int = 0, kind: str = "logistic",
                      tree_settings: dict[str, float | int] | None = None,
                      ) -> tuple[MarkerReader, dict[str, dict[str, float]]]:
    """The reader (stage 1) and, per ``case_id``, the cross-fitted marker probabilities (feature name -> 0-1).
    ``kind``: ``logistic`` (L2 ``c`` on standardised inputs) or ``boosted_trees`` (``tree_settings``, default
    :data:`TREE_SETTINGS`)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    if kind not in READER_KINDS:
        raise ValueError(f"marker reader kind must be one of {', '.join(READER_KINDS)} (got {kind!r})")
    usable = [r for r in rows if r.get("detected") and all(f"truth_{k}" in r for k in NCCT_MARKERS)
              and all(f"clot_{k}" in r for k in READER_INPUTS)]
    if len(usable) < 50:
        raise ValueError(f"fitting the marker reader needs >= 50 detected haematomas with marker truth and all "
                         f"measurements (got {len(usable)})")
    x = np.array([[float(r[f"clot_{k}"]) for k in READER_INPUTS] for r in usable])
    means, scales = _standardise(x)
    z = (x - means) / scales
    settings = {**TREE_SETTINGS, **(tree_settings or {})}
    models: dict[str, MarkerModel | BoostedTreesModel] = {}
    crossfit: dict[str, dict[str, float]] = {r["case_id"]: {} for r in usable}
    kappas = {}
    for name in NCCT_MARKERS:
        y = np.array([int(r[f"truth_{name}"]) for r in usable])
        if len(set(y.tolist())) < 2 or min(int(y.sum()), int((1 - y).sum())) < folds:
            raise ValueError(f"fitting the marker reader: too few cases with and without {name}")
        if kind == "logistic":
            estimator, inputs = LogisticRegression(C=c, max_iter=5000), z
        else:
            estimator, inputs = HistGradientBoostingClassifier(random_state=seed, early_stopping=False,
                                                               **settings), x
        with threadpool_limits(limits=1, user_api="openmp"):  # small data: threads only contend with the rest
            cv = cross_val_predict(estimator, inputs, y, method="predict_proba",
                                   cv=StratifiedKFold(folds, shuffle=True, random_state=seed))[:, 1]
            estimator.fit(inputs, y)
        kappas[name], threshold = _best_kappa_threshold(y, cv)
        if kind == "logistic":
            models[name] = MarkerModel(feature_names=READER_INPUTS, means=tuple(means.tolist()),
                                       scales=tuple(scales.tolist()), coefficients=tuple(estimator.coef_[0].tolist()),
                                       intercept=float(estimator.intercept_[0]), threshold=threshold)
        else:
            models[name] = export_boosted_trees(estimator, READER_INPUTS, threshold)
        for r, p in zip(usable, cv, strict=True):
            crossfit[r["case_id"]][PROBABILITY_FEATURES[name]] = float(p)
    summary = ", ".join(f"{k} {kappas[k]:.2f}" for k in NCCT_MARKERS)
    method = (f"L2 logistic regression per marker, C={c:g}" if kind == "logistic" else
              "gradient-boosted trees per marker (" + ", ".join(f"{k}={v:g}" for k, v in settings.items()) + ")")
    reader = MarkerReader(models=models, fitted_on=(
        f"{cohort}: {len(usable)} detected haematomas with marker truth; {method}, "
        f"{len(READER_INPUTS)} measurements; threshold of maximum Cohen's kappa on {folds}-fold cross-fitted "
        f"probabilities (cross-fitted kappa: {summary})"))
    return reader, crossfit


def _logistic(z: np.ndarray, y: np.ndarray, c: float, lower: list[float | None]) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize

    d = z.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = z @ theta[:d] + theta[d]
        p = np.exp(-np.logaddexp(0.0, -eta))
        value = c * float(np.sum(np.logaddexp(0.0, eta) - y * eta)) + 0.5 * float(theta[:d] @ theta[:d])
        grad = np.concatenate([c * (z.T @ (p - y)) + theta[:d], [c * float(np.sum(p - y))]])
        return value, grad

    bounds = [(lo, None) for lo in lower] + [(None, None)]
    res = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    return res.x[:d], float(res.x[d])


def fit_marker_expansion_model(rows: list[dict[str, Any]], crossfit: dict[str, dict[str, float]], cohort: str,
                               c: float = 0.05, nonnegative: bool = True) -> ExpansionModel:
    """The expansion model (stage 2) from serving-path rows and the reader's cross-fitted probabilities."""
    usable = [r for r in rows if r.get("detected") and r.get("label") is not None
              and r.get("network_probability") is not None and r["case_id"] in crossfit]
    y = np.array([int(r["label"]) for r in usable], dtype=np.float64)
    if len(usable) < 20 or len(set(y.tolist())) < 2:
        raise ValueError(f"fitting the expansion model needs >= 20 detected, labelled haematomas of both classes "
                         f"(got {len(usable)})")
    x = []
    for r in usable:
        p = min(max(float(r["network_probability"]), 1e-6), 1 - 1e-6)
        values = {"network_logit": float(np.log(p / (1 - p))), "log_volume_ml": float(r["clot_log_volume_ml"]),
                  **crossfit[r["case_id"]]}
        x.append([values[k] for k in EXPANSION_INPUTS])
    x = np.asarray(x, dtype=np.float64)
    means, scales = _standardise(x)
    lower = [None if (k in UNCONSTRAINED or not nonnegative) else 0.0 for k in EXPANSION_INPUTS]
    coef, intercept = _logistic((x - means) / scales, y, c, lower)
    constraint = "coefficients of volume and markers >= 0" if nonnegative else "unconstrained"
    return ExpansionModel(method="network+clot", feature_names=EXPANSION_INPUTS, means=tuple(means.tolist()),
                          scales=tuple(scales.tolist()), coefficients=tuple(float(v) for v in coef),
                          intercept=intercept, fitted_on=(
                              f"{cohort}: {len(usable)} detected haematomas with a label ({int(y.sum())} expanding) "
                              f"on the marker reader's cross-fitted probabilities; L2 C={c:g}, {constraint}"))
