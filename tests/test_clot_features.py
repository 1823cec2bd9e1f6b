"""Clot measurements (HU inside the segmented haematoma) and the expansion model that uses them."""

from __future__ import annotations

import numpy as np
import pytest

from app.model.clot_features import FEATURE_NAMES, ExpansionModel, clot_features
from app.model.postprocessing import Postprocessing
from model_training.expansion_model import INPUTS, fit_expansion_model

SPACING = (5.0, 0.9, 0.9)


def _clot(hypodense: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.mgrid[:12, :64, :64]
    r = np.sqrt(((z - 6) * 5.0) ** 2 + ((y - 32) * 0.9) ** 2 + ((x - 32) * 0.9) ** 2)
    mask = (r < 18).astype(np.uint8)
    hu = np.where(mask, 65.0, 30.0) + rng.normal(0, 4, mask.shape)
    if hypodense:
        hu[(r < 8)] -= 32.0  # a black hole: > 28 HU below the clot, inside it
    return hu.astype(np.float32), mask


def test_features_see_a_hypodense_focus_inside_the_clot():
    rng = np.random.default_rng(0)
    plain = clot_features(*_clot(False, rng), SPACING)
    focus = clot_features(*_clot(True, rng), SPACING)
    assert set(plain) == set(FEATURE_NAMES)
    assert focus["hypodense_fraction"] > plain["hypodense_fraction"] + 0.03
    assert focus["black_hole_fraction"] > plain["black_hole_fraction"]
    assert focus["low_tail_hu"] < plain["low_tail_hu"] - 10
    assert plain["log_volume_ml"] == pytest.approx(np.log1p(_clot(False, rng)[1].sum() * 4.05e-3), rel=1e-6)
    assert clot_features(np.zeros((4, 8, 8)), np.zeros((4, 8, 8)), SPACING) == {k: 0.0 for k in FEATURE_NAMES}


def test_fitted_model_learns_the_signal_and_round_trips_through_the_manifest():
    rng = np.random.default_rng(1)
    rows = []
    for i in range(80):
        hypo = bool(i % 2)
        label = int(rng.random() < (0.6 if hypo else 0.15))
        f = clot_features(*_clot(hypo, rng), SPACING)
        rows.append({"detected": True, "label": label, "network_probability": 0.3,
                     **{f"clot_{k}": v for k, v in f.items()}})
    model = fit_expansion_model(rows, "synthetic rows")
    assert model.method == "network+clot" and model.feature_names == INPUTS
    focus = model.probability(0.3, clot_features(*_clot(True, rng), SPACING))
    plain = model.probability(0.3, clot_features(*_clot(False, rng), SPACING))
    assert focus > plain + 0.2
    post = Postprocessing.model_validate({"expansion_model": model.model_dump(mode="json")})
    assert post.expansion_model == model
    assert ExpansionModel().probability(0.42, {}) == 0.42
    with pytest.raises(ValueError):
        ExpansionModel(method="network+clot", feature_names=("nonsense",), means=(0.0,), scales=(1.0,),
                       coefficients=(1.0,))


def test_fitting_keeps_the_expansion_model_and_card_edits_keep_checksums(tmp_path):
    """Calibration replaces detection and calibration only; a model-card section rewrite keeps the weights
    loadable (the card's sha256 in the manifest follows it)."""
    from service_fixtures import SMALL_NAME, SMALL_VERSION, make_weights_dir

    from app.weights.registry import load_weights, model_id
    from model_training.calibration import fit_from_rows, replace_card_section, write_model_card

    rng = np.random.default_rng(2)
    kept = ExpansionModel(method="network+clot", feature_names=("network_logit",), means=(0.0,), scales=(1.0,),
                          coefficients=(1.0,))
    rows = [{"has_ich": i < 40, "label": int(rng.random() < 0.3) if i < 40 else None,
             "segmented_volume_ml": float(rng.uniform(3, 30)) if i < 40 else float(rng.uniform(0, 1)),
             "mean_probability": 0.8, "raw_probability": float(rng.uniform(0.05, 0.9))} for i in range(60)]
    fit = fit_from_rows(rows, "rows", current=Postprocessing(expansion_model=kept))
    assert fit["postprocessing"]["expansion_model"] == kept.model_dump(mode="json")
    assert fit["postprocessing"]["calibration"]["method"] == "platt"

    root = make_weights_dir(tmp_path / "weights")
    loaded = load_weights(root, model_id(SMALL_NAME, SMALL_VERSION))
    card = replace_card_section("# Card\n\n## A\n\nold\n\n## B\n\nkeep\n", "## A", "new")
    assert card == "# Card\n\n## B\n\nkeep\n\n## A\n\nnew\n"
    write_model_card(loaded.path, card)
    assert (load_weights(root, model_id(SMALL_NAME, SMALL_VERSION)).path / "MODEL_CARD.md").read_text() == card
