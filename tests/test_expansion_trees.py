"""The expansion model as gradient-boosted trees over the clot measurements (app/model/clot_features.py,
``method="trees"``), its fit (model_training/expansion_trees.py) and ``python -m model_training fit-expansion``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.model.clot_features import ExpansionModel
from app.model.marker_trees import RegressionTree
from app.model.postprocessing import Postprocessing
from model_training.expansion_trees import INPUTS, fit_expansion_trees

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, seed: int) -> list[dict]:
    """Serving-path-like rows whose risk needs two measurements at once (a dark focus that is deep *and* large)
    plus the volume; the label is a Bernoulli draw of that risk."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        r = {"case_id": f"R{i:04d}", "detected": True, "network_probability": float(rng.uniform(0.2, 0.4))}
        r.update({f"clot_{k}": float(rng.normal()) for k in INPUTS[1:]})
        eta = -1.2 + 0.6 * r["clot_log_volume_ml"] + 2.2 * float(r["clot_dark_peak_depth_mm"] > 0.2
                                                                  and r["clot_dark_peak_ml"] > 0.2)
        risk = 1.0 / (1.0 + np.exp(-eta))
        r.update({"risk_image": risk, "label": int(rng.random() < risk)})
        rows.append(r)
    return rows


def _auc(model: ExpansionModel, rows: list[dict]) -> float:
    from sklearn.metrics import roc_auc_score

    p = [model.probability(r["network_probability"], {k[len("clot_"):]: v for k, v in r.items()
                                                       if k.startswith("clot_")}) for r in rows]
    return float(roc_auc_score([r["label"] for r in rows], p))


def test_regression_tree_export_scores_as_scikit_learn_does():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from model_training.marker_reader_fit import export_trees

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3))
    y = np.where(x[:, 0] > 0, 1.5, -0.5) + 0.3 * x[:, 1]
    reg = HistGradientBoostingRegressor(max_iter=30, max_leaf_nodes=8, random_state=0).fit(x, y)
    baseline, trees = export_trees(reg)
    names = ("network_logit", "log_volume_ml", "dark_peak_ml")
    model = ExpansionModel(method="trees", feature_names=names, baseline=baseline, trees=trees, target="risk_image")
    new = rng.normal(size=(40, 3))
    ours = []
    for row in new:
        network = 1.0 / (1.0 + np.exp(-row[0]))
        ours.append(model.probability(network, {"log_volume_ml": row[1], "dark_peak_ml": row[2]}))
    np.testing.assert_allclose(ours, 1.0 / (1.0 + np.exp(-reg.predict(new))), rtol=0, atol=1e-6)


def test_risk_target_learns_an_interaction_from_fewer_cases_than_the_label_and_survives_the_manifest():
    train, test = _rows(300, 21), _rows(1500, 22)
    on_risk, summary = fit_expansion_trees(train, "interaction rows", target="risk_image")
    on_label, _ = fit_expansion_trees(train, "interaction rows", target="label")
    ceiling = __import__("sklearn.metrics", fromlist=["roc_auc_score"]).roc_auc_score(
        [r["label"] for r in test], [r["risk_image"] for r in test])
    assert _auc(on_risk, test) > ceiling - 0.03
    assert _auc(on_risk, test) > _auc(on_label, test)
    assert summary["n"] == 300 and 0.5 < summary["crossfit_auc"] < 1.0
    assert "risk_image logit" in on_risk.fitted_on and on_risk.target == "risk_image"
    post = Postprocessing.model_validate({"expansion_model": on_risk.model_dump(mode="json")})
    assert post.expansion_model == on_risk


def test_expansion_trees_refuse_what_they_cannot_fit():
    rows = _rows(80, 4)
    with pytest.raises(ValueError, match="target 'label'"):
        fit_expansion_trees([{**r, "risk_image": None} for r in rows], "real cohort", target="risk_image")
    with pytest.raises(ValueError, match=">= 50 detected"):
        fit_expansion_trees(rows[:30], "small cohort")
    with pytest.raises(ValueError, match="target must be one of"):
        fit_expansion_trees(rows, "cohort", target="onset")
    leaf = RegressionTree(feature=(-1,), threshold=(0.0,), left=(0,), right=(0,), value=(0.2,))
    with pytest.raises(ValueError, match="needs trees and their target"):
        ExpansionModel(method="trees", feature_names=("log_volume_ml",), trees=(leaf,))
    with pytest.raises(ValueError, match="beyond feature_names"):
        split = RegressionTree(feature=(3, -1, -1), threshold=(0.0, 0.0, 0.0), left=(1, 0, 0), right=(2, 0, 0),
                               value=(0.0, 0.1, 0.2))
        ExpansionModel(method="trees", feature_names=("log_volume_ml",), trees=(split,), target="label")
    with pytest.raises(ValueError, match="unknown: nonsense"):
        ExpansionModel(method="trees", feature_names=("nonsense",), trees=(leaf,), target="label")


def test_fit_expansion_command_writes_the_trees_and_keeps_the_reader(tmp_path):
    from app.weights.registry import load_weights, register_in_registry, save_weights
    from model_training.cli import main

    source = load_weights(ROOT / "weights", None)
    reg = tmp_path / "weights"
    reg.mkdir()
    keep = {k: v for k, v in source.manifest.items() if k not in (
        "schema", "plans", "plans_fingerprint", "model_config", "model_config_fingerprint", "parameters", "files")}
    save_weights(source.model, source.plans, source.config, reg / f"{source.name}-9.0.0",
                 {**keep, "version": "9.0.0"}, "card")
    register_in_registry(reg, source.name, "9.0.0", keep["created"], make_default=False)
    target = load_weights(reg, "9.0.0")
    report = tmp_path / "fit" / "serving_report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"model": {"name": target.name, "version": "9.0.0", "sha256": target.weights_sha256},
                                  "manifest": {"file": "manifest.csv", "cohort": "fit"}, "cases": _rows(120, 8)}))
    assert main(["fit-expansion", "--weights", str(reg), "--version", "9.0.0", "--report", str(report),
                 "--out", str(tmp_path / "out")]) == 0
    fitted = load_weights(reg, "9.0.0")
    assert fitted.postprocessing.expansion_model.method == "trees"
    assert fitted.postprocessing.marker_reader == target.postprocessing.marker_reader
    assert fitted.postprocessing.markers == target.postprocessing.markers
    written = json.loads((tmp_path / "out" / "expansion_model.json").read_text())
    assert written["fit"]["n"] == 120 and written["fit"]["target"] == "risk_image"
    report.write_text(json.dumps({"model": {"name": target.name, "version": "9.0.0", "sha256": "ab" * 32},
                                  "manifest": {"file": "manifest.csv"}, "cases": _rows(120, 8)}))
    assert main(["fit-expansion", "--weights", str(reg), "--version", "9.0.0", "--report", str(report),
                 "--out", str(tmp_path / "out2")]) == 2
