"""The learned marker reader (app/model/marker_reader.py), its fit and the expansion model on its probabilities
(model_training/marker_reader_fit.py), and the texture measurements it reads (app/model/clot_texture.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from app.model.clot_features import ExpansionModel
from app.model.clot_texture import TEXTURE_UNITS, measure_texture
from app.model.marker_reader import PROBABILITY_FEATURES, READER_INPUTS, MarkerModel, MarkerReader
from app.model.ncct_markers import NCCT_MARKERS
from app.model.postprocessing import Postprocessing
from model_training.marker_reader_fit import EXPANSION_INPUTS, fit_marker_expansion_model, fit_marker_reader

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
