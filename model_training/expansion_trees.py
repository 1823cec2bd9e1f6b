"""Fit the expansion model as gradient-boosted trees over the clot measurements
(:class:`app.model.clot_features.ExpansionModel` with ``method="trees"``), from serving-path rows.

The marker reader followed by a logistic regression (:mod:`model_training.marker_reader_fit`) passes the image
to the expansion model through seven probabilities, each fitted to one marker's truth; what a reader gets wrong
(a swirl taken for a hypodensity, a clot that shows two markers at once) is lost there. Trees over the
measurements themselves (:data:`INPUTS`: the network's expansion logit and every measurement the reader reads)
learn the risk without that bottleneck and read the interactions (a large clot *and* a deep dark focus).

Targets (:data:`TARGETS`):

* ``risk_image`` (synthetic cohorts only): the generator's image-only risk of each case (manifest column
  ``risk_image``: the expansion probability averaged over the onset-time prior, which the image cannot show) is
  the expectation of the label given what the image shows. The trees regress its logit (squared error), so the
  Bernoulli noise of the label does not have to be averaged out by more cases.
* ``label``: the expansion label itself (log-loss), for cohorts without a generator risk (real cohorts).

Either way the trees' raw score is the logit of the expansion probability; ``calibrate`` on a separate
validation cohort afterwards fits the Platt calibration over it. The fit reports the ``folds``-fold cross-fitted
AUC of the trees against the label (seeded, stratified), written into ``fitted_on``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.model.clot_features import ExpansionModel
from app.model.marker_reader import READER_INPUTS

INPUTS: tuple[str, ...] = ("network_logit", *dict.fromkeys(READER_INPUTS))
TARGETS: tuple[str, ...] = ("risk_image", "label")
#: scikit-learn ``HistGradientBoosting*`` settings, chosen by AUC on a separate validation cohort (see the
#: weights' model card)
TREE_SETTINGS: dict[str, float | int] = {"max_iter": 200, "learning_rate": 0.05, "max_leaf_nodes": 15,
                                         "min_samples_leaf": 20, "l2_regularization": 1.0}
RISK_CLIP = 1e-4
MIN_ROWS = 50


def _logit(p: np.ndarray | float, eps: float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(q) - np.log1p(-q)


def design(rows: list[dict[str, Any]]) -> np.ndarray:
    """(n, len(:data:`INPUTS`)) inputs of serving-path rows (``network_probability`` and ``clot_*`` columns)."""
    return np.array([[float(_logit(r["network_probability"], 1e-6)) if k == "network_logit"
                      else float(r[f"clot_{k}"]) for k in INPUTS] for r in rows], dtype=np.float64)


def usable_rows(rows: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """The detected, labelled haematomas with every input (and, for ``risk_image``, the generator's risk)."""
    if target not in TARGETS:
        raise ValueError(f"expansion trees: target must be one of {', '.join(TARGETS)} (got {target!r})")
    usable = [r for r in rows if r.get("detected") and r.get("label") is not None
              and r.get("network_probability") is not None and all(f"clot_{k}" in r for k in INPUTS[1:])]
    if target == "risk_image":
        missing = sum(r.get("risk_image") is None for r in usable)
        if missing:
            raise ValueError(f"expansion trees: {missing} of {len(usable)} rows have no risk_image (a synthetic "
                             f"cohort's generator risk); fit a real cohort with target 'label'")
    if len(usable) < MIN_ROWS or len({int(r["label"]) for r in usable}) < 2:
        raise ValueError(f"expansion trees need >= {MIN_ROWS} detected, labelled haematomas of both classes "
                         f"(got {len(usable)})")
    return usable


def _estimator(target: str, settings: dict[str, float | int], seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingRegressor if target == "risk_image" else HistGradientBoostingClassifier
    return cls(random_state=seed, early_stopping=False, **settings)


def _raw(estimator: Any, x: np.ndarray, target: str) -> np.ndarray:
    return estimator.predict(x) if target == "risk_image" else estimator.decision_function(x)


def fit_expansion_trees(rows: list[dict[str, Any]], cohort: str, *, target: str = "risk_image",
                        settings: dict[str, float | int] | None = None, seed: int = 0, folds: int = 5,
                        ) -> tuple[ExpansionModel, dict[str, Any]]:
    """The fitted model and its fit summary (rows, expanding, cross-fitted AUC against the label)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    from model_training.marker_reader_fit import export_trees

    usable = usable_rows(rows, target)
    x, label = design(usable), np.array([int(r["label"]) for r in usable])
    y = _logit([float(r["risk_image"]) for r in usable], RISK_CLIP) if target == "risk_image" else label
    params = {**TREE_SETTINGS, **(settings or {})}
    crossfit = np.zeros(len(usable))
    with threadpool_limits(limits=1, user_api="openmp"):  # small data: threads only contend with the rest
        for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, label):
            crossfit[held] = _raw(_estimator(target, params, seed).fit(x[train], y[train]), x[held], target)
        estimator = _estimator(target, params, seed).fit(x, y)
    auc = float(roc_auc_score(label, crossfit))
    baseline, trees = export_trees(estimator)
    summary = {"n": len(usable), "n_expanding": int(label.sum()), "target": target, "crossfit_auc": auc,
               "settings": params, "seed": seed, "folds": folds}
    described = ", ".join(f"{k}={v:g}" for k, v in params.items())
    model = ExpansionModel(method="trees", feature_names=INPUTS, baseline=baseline, trees=trees, target=target,
                           fitted_on=(f"{cohort}: {len(usable)} detected haematomas with a label "
                                      f"({int(label.sum())} expanding); gradient-boosted trees ({described}, seed "
                                      f"{seed}) on the {target}"
                                      f"{' logit' if target == 'risk_image' else ''}; {folds}-fold cross-fitted "
                                      f"AUC against the label {auc:.3f}"))
    return model, summary
