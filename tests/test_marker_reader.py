"""The learned marker reader (app/model/marker_reader.py), its fit and the expansion model on its probabilities
(model_training/marker_reader_fit.py), and the texture measurements it reads (app/model/clot_texture.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from app.model.clot_features import ExpansionModel
from app.model.clot_texture import TEXTURE_UNITS, measure_texture
from app.model.marker_reader import PROBABILITY_FEATURES, READER_INPUTS, MarkerModel, MarkerReader
from app.model.ncct_markers import NCCT_MARKERS
from app.model.postprocessing import Postprocessing
from model_training.marker_reader_fit import EXPANSION_INPUTS, fit_marker_expansion_model, fit_marker_reader

ROOT = Path(__file__).resolve().parents[1]

SPACING = (5.0, 0.5, 0.5)
SHAPE = (9, 120, 120)


def _ball(r: float, c=(20.0, 30.0, 30.0)) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)), indexing="ij")
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r


def _image(density: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(density.astype(np.float32), (0.0, 1.0, 1.0)) + \
        rng.normal(0.0, 3.0, density.shape).astype(np.float32)


def _rows(n: int, seed: int) -> list[dict]:
    """Serving-path-like rows: each marker shifts a few measurements, the label follows a logistic risk."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        truth = {k: int(rng.random() < 0.35) for k in NCCT_MARKERS}
        x = {k: float(rng.normal()) for k in READER_INPUTS}
        for j, k in enumerate(NCCT_MARKERS):
            x[READER_INPUTS[j + 1]] += 2.0 * truth[k]  # [0] is the log volume
        eta = -1.5 + 1.2 * truth["hypodensity"] + 0.8 * truth["blend"] + 0.5 * x["log_volume_ml"]
        rows.append({"case_id": f"c{i}", "detected": True, "network_probability": 0.3,
                     "label": int(rng.random() < 1 / (1 + np.exp(-eta))),
                     **{f"clot_{k}": v for k, v in x.items()}, **{f"truth_{k}": v for k, v in truth.items()}})
    return rows


def test_texture_reads_an_encapsulated_dark_focus_and_a_round_section():
    clot = _ball(15.0)
    plain = np.where(clot, 70.0, 32.0)
    focus = np.where(_ball(6.0), 35.0, plain)
    a = measure_texture(_image(plain), clot, SPACING)
    b = measure_texture(_image(focus), clot, SPACING)
    assert set(a) == set(TEXTURE_UNITS)
    assert b["dark_peak_hu"] > a["dark_peak_hu"] + 15.0
    assert b["dark_peak_depth_mm"] >= 5.0 and b["dark_peak_offset"] < 0.5
    assert b["brain_density_fraction"] > a["brain_density_fraction"]
    assert a["slice_solidity"] > 0.95 and a["radial_cv"] < 0.1
    assert a["ellipsoid_mismatch"] < 0.35


def test_texture_of_an_empty_mask_is_zero():
    out = measure_texture(np.zeros(SHAPE, np.float32), np.zeros(SHAPE, bool), SPACING)
    assert out == {k: 0.0 for k in TEXTURE_UNITS}


def test_reader_fit_reads_the_markers_on_new_cases_and_the_expansion_model_keeps_marker_signs():
    train, test = _rows(400, 1), _rows(200, 2)
    reader, crossfit = fit_marker_reader(train, "synthetic rows", c=0.3)
    assert set(crossfit) == {r["case_id"] for r in train}
    agree = []
    for r in test:
        features = {k[len("clot_"):]: v for k, v in r.items() if k.startswith("clot_")}
        features.update(reader.probabilities(features))
        decided = reader.decide(features)
        agree += [decided[k] == bool(r[f"truth_{k}"]) for k in NCCT_MARKERS]
    assert np.mean(agree) > 0.8
    model = fit_marker_expansion_model(train, crossfit, "synthetic rows", c=0.5, nonnegative=True)
    assert model.feature_names == EXPANSION_INPUTS
    coef = dict(zip(model.feature_names, model.coefficients, strict=True))
    assert all(coef[k] >= 0 for k in EXPANSION_INPUTS if k != "network_logit")
    assert coef["hypodensity_probability"] > coef["swirl_probability"]
    assert coef["log_volume_ml"] > 0


def test_reader_refuses_too_few_cases():
    with pytest.raises(ValueError, match="marker reader"):
        fit_marker_reader(_rows(30, 3), "tiny")


def test_reader_validates_its_models():
    model = MarkerModel(feature_names=("dark_peak_hu",), means=(0.0,), scales=(1.0,), coefficients=(1.0,),
                        intercept=0.0, threshold=0.5)
    with pytest.raises(ValueError, match="each of"):
        MarkerReader(models={"hypodensity": model})
    with pytest.raises(ValueError, match="unknown measurement"):
        MarkerModel(feature_names=("nope",), means=(0.0,), scales=(1.0,), coefficients=(1.0,), intercept=0.0)
    reader = MarkerReader(models={k: model for k in NCCT_MARKERS})
    probs = reader.probabilities({"dark_peak_hu": 2.0})
    assert set(probs) == set(PROBABILITY_FEATURES.values()) and probs["blend_probability"] == pytest.approx(
        1 / (1 + np.exp(-2.0)), abs=1e-6)
    assert all(reader.decide(probs).values())
    post = Postprocessing.model_validate({"marker_reader": reader.model_dump(mode="json")})
    assert post.marker_reader == reader
    ExpansionModel(method="network+clot", feature_names=EXPANSION_INPUTS, means=(0.0,) * 9, scales=(1.0,) * 9,
                   coefficients=(0.1,) * 9)


def test_default_weights_report_each_marker_by_the_readers_probability(tmp_path):
    """Through the client path (NIfTI -> ingestion -> Predictor -> result document), on a held-out phantom."""
    from conftest import PROJECT_ROOT

    from app.inference import Predictor
    from app.ingestion import load_series
    from app.result import build_document
    from model_training.synthetic.case import generate_case
    from model_training.synthetic.nifti_writer import write_nifti

    predictor = Predictor.from_registry(PROJECT_ROOT / "weights", None, "cpu")
    reader = predictor.postprocessing.marker_reader
    assert reader is not None, "the default weights read the markers with the learned reader"
    case = next(c for c in (generate_case(90907, i, ich_free=False, n_slices=24) for i in range(40))
                if c.baseline_volume_ml >= 10.0)
    image, _ = write_nifti(case, tmp_path / case.case_id)
    series = load_series([str(image)])
    result = predictor.predict(series)
    assert result.detected
    doc = build_document("r", predictor, series, result, result.timings_ms, 1.5).model_dump(mode="json")
    for name in NCCT_MARKERS:
        finding = doc["ncct_markers"][name]
        assert finding["measurement"] == PROBABILITY_FEATURES[name] and finding["unit"] == "1"
        assert 0.0 <= finding["value"] <= 1.0
        assert finding["threshold"] == reader.models[name].threshold
        assert finding["present"] == (result.clot_features[PROBABILITY_FEATURES[name]] >= finding["threshold"])
    assert set(TEXTURE_UNITS) <= set(doc["haematoma"]["measurements"])
    assert doc["bat"]["points"]["hypodensity"] == (2 if doc["ncct_markers"]["hypodensity"]["present"] else 0)


def _interaction_rows(n: int, seed: int) -> list[dict]:
    """Rows in which one marker shows only where two measurements are both high (no main effect alone)."""
    rows = _rows(n, seed)
    rng = np.random.default_rng(seed + 100)
    a, b = READER_INPUTS[-1], READER_INPUTS[-2]
    for r in rows:
        r[f"clot_{a}"], r[f"clot_{b}"] = float(rng.normal()), float(rng.normal())
        r["truth_swirl"] = int(r[f"clot_{a}"] > 0.3 and r[f"clot_{b}"] > 0.3)
    return rows


def test_boosted_trees_export_scores_as_scikit_learn_does():
    from sklearn.ensemble import HistGradientBoostingClassifier

    from model_training.marker_reader_fit import export_boosted_trees

    rng = np.random.default_rng(5)
    names = READER_INPUTS[:4]
    x = rng.normal(size=(300, 4))
    y = ((x[:, 0] > 0) & (x[:, 1] > -0.2) | (x[:, 2] > 1.2)).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=6, random_state=0).fit(x, y)
    model = export_boosted_trees(clf, names, threshold=0.4)
    new = rng.normal(size=(50, 4))
    ours = [model.probability(dict(zip(names, row, strict=True))) for row in new]
    np.testing.assert_allclose(ours, clf.predict_proba(new)[:, 1], rtol=0, atol=1e-9)
    assert len(model.trees) == 40 and model.threshold == 0.4


def test_boosted_trees_reader_reads_an_interaction_the_logistic_one_misses_and_survives_the_manifest():
    train, test = _interaction_rows(500, 11), _interaction_rows(300, 12)

    def agreement(reader: MarkerReader) -> float:
        hits = []
        for r in test:
            features = {k[len("clot_"):]: v for k, v in r.items() if k.startswith("clot_")}
            features.update(reader.probabilities(features))
            hits.append(reader.decide(features)["swirl"] == bool(r["truth_swirl"]))
        return float(np.mean(hits))

    trees, crossfit = fit_marker_reader(train, "interaction rows", kind="boosted_trees",
                                        tree_settings={"max_iter": 60, "learning_rate": 0.1})
    logistic, _ = fit_marker_reader(train, "interaction rows", kind="logistic")
    assert agreement(trees) > 0.95 and agreement(trees) > agreement(logistic) + 0.03
    assert "gradient-boosted trees" in trees.fitted_on and set(crossfit) == {r["case_id"] for r in train}
    post = Postprocessing.model_validate({"marker_reader": trees.model_dump(mode="json")})
    assert post.marker_reader == trees
    assert type(post.marker_reader.models["swirl"]).__name__ == "BoostedTreesModel"


def test_boosted_trees_refuse_a_malformed_tree():
    from app.model.marker_trees import BoostedTreesModel, RegressionTree

    leaf = RegressionTree(feature=(-1,), threshold=(0.0,), left=(0,), right=(0,), value=(0.2,))
    with pytest.raises(ValueError, match="outside the tree"):
        RegressionTree(feature=(0, -1), threshold=(0.0, 0.0), left=(1, 0), right=(2, 0), value=(0.0, 1.0))
    with pytest.raises(ValueError, match="beyond feature_names"):
        BoostedTreesModel(feature_names=("dark_peak_hu",), baseline=0.0, trees=(RegressionTree(
            feature=(1, -1, -1), threshold=(0.0,) * 3, left=(1, 0, 0), right=(2, 0, 0), value=(0.0, 1.0, -1.0)),))
    with pytest.raises(ValueError, match="unknown measurement"):
        BoostedTreesModel(feature_names=("nope",), baseline=0.0, trees=(leaf,))
    with pytest.raises(ValueError, match="kind"):
        fit_marker_reader(_rows(60, 4), "rows", kind="forest")


def test_fit_reader_pools_saved_reports_of_the_same_network_only(tmp_path):
    import json

    from model_training.commands.fit_reader import pooled_rows

    for cohort, seed, named in (("cohort_a", 21, {}), ("cohort_b", 22, {"cohort": "val_b"})):
        (tmp_path / cohort).mkdir()
        (tmp_path / cohort / "serving_report.json").write_text(json.dumps(
            {"model": {"sha256": "ab" * 32}, "manifest": {"file": "manifest.csv", **named}, "cases": _rows(60, seed)}))
    reports = [tmp_path / c / "serving_report.json" for c in ("cohort_a", "cohort_b")]
    rows, cohort = pooled_rows(reports, SimpleNamespace(weights_sha256="ab" * 32), tmp_path)
    assert len(rows) == 120 and len({r["case_id"] for r in rows}) == 120
    assert rows[0]["case_id"] == "cohort_a/c0" and rows[60]["case_id"] == "val_b/c0"
    assert "val_b (manifest.csv, 60 cases)" in cohort
    with pytest.raises(ValueError, match="not of these weights' network"):
        pooled_rows(reports, SimpleNamespace(weights_sha256="cd" * 32), tmp_path)


def test_fit_reader_takes_rows_of_a_registered_copy_with_the_same_network(tmp_path):
    """Saving weights under a new version rewrites the file's metadata (so its hash), not the network: rows of
    the source version are accepted for the copy, and refused once a tensor or the mask refinement differs."""
    import torch

    from app.weights.registry import load_weights, register_in_registry, save_weights
    from model_training.commands.fit_reader import same_network

    source = load_weights(ROOT / "weights", None)
    reg = tmp_path / "weights"
    reg.mkdir()
    keep = {k: v for k, v in source.manifest.items() if k not in (
        "schema", "plans", "plans_fingerprint", "model_config", "model_config_fingerprint", "parameters", "files")}
    for version, change in (("1.0.0", None), ("1.0.1", None), ("1.0.2", "tensor"), ("1.0.3", "refinement")):
        manifest = {**keep, "version": version}
        model = source.model
        if change == "tensor":
            model = copy.deepcopy(source.model)
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] += 1e-3
        if change == "refinement":
            post = dict(manifest["postprocessing"])
            post["refinement"] = {**post.get("refinement", {}), "enabled": False}
            manifest["postprocessing"] = post
        save_weights(model, source.plans, source.config, reg / f"{source.name}-{version}", manifest, "card")
        register_in_registry(reg, source.name, version, manifest["created"], make_default=False)
    first = load_weights(reg, "1.0.0")
    named = {"name": first.name, "version": "1.0.0", "sha256": first.weights_sha256}
    copy_ = load_weights(reg, "1.0.1")
    assert copy_.weights_sha256 != first.weights_sha256 and same_network(reg, named, copy_)
    assert not same_network(reg, {**named, "sha256": "ef" * 32}, copy_)  # the report's file is not the registered one
    assert not same_network(reg, named, load_weights(reg, "1.0.2"))
    assert not same_network(reg, named, load_weights(reg, "1.0.3"))
