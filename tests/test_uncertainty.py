"""Test-time augmentation and abstention (app/model/uncertainty.py) in the Predictor and the result document:

* the augmentations are deterministic and undone exactly (flip, in-plane shifts) away from the shifted border;
* with TTA the volume and probability intervals contain their estimates, scale with the manifest's fitted
  quantile (one per side where fitted), and leave the primary estimates unchanged; without TTA they are null;
  CPU default: off;
* a fit on skewed volume errors gives each side its own quantile and covers the nominal share on fresh draws
  of the same errors, where a symmetric fit of the same width misses mostly on the long side;
* abstention reasons (enum values): mask at the field-of-view edge, interval too wide, infratentorial, image
  statistics outside the recorded range; the result document carries them (old documents still validate).

Budget: about 10-15 s on 2 CPU cores (the small seeded model on a 12-slice phantom, a handful of predictions).
"""

from __future__ import annotations

import numpy as np
import pytest
from service_fixtures import random_weights, write_phantom_series

from app.errors import AbstainReason
from app.inference import Predictor
from app.ingestion import load_series
from app.model import uncertainty
from app.result import build_document
from app.result_schema import PredictionResponse

MODEL_SEED = 5  # segments (and so detects) a region of the phantom


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory):
    paths = write_phantom_series(tmp_path_factory.mktemp("tta") / "series", n_slices=12, size=64, seed=4)
    return load_series([str(p) for p in paths])


def _predictor(passes: int | None, block: dict | None = None) -> Predictor:
    weights = random_weights(MODEL_SEED)
    if block is not None:
        weights.manifest = {**weights.manifest, "uncertainty": block}
    return Predictor(weights, "cpu", tta_passes=passes)


def test_augmentations_are_deterministic_and_undone() -> None:
    augs = uncertainty.augmentations(5)
    assert augs == uncertainty.augmentations(5) and len(augs) == 5
    assert [a.flip_x for a in augs] == [True, False, True, False, True]
    assert augs[0].shift_yx == (0, 0) and augs[1].shift_yx == (uncertainty.SHIFT_VOXELS, 0)
    x = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    b = uncertainty.SHIFT_VOXELS
    for aug in augs:
        moved = aug.apply(x)
        assert moved.shape == x.shape and moved.dtype == np.float32 and not np.array_equal(moved, x)
        back = aug.invert(moved)
        assert np.array_equal(back[:, b:-b, b:-b], x[:, b:-b, b:-b])
    assert uncertainty.default_passes("cpu") == 0 and uncertainty.default_passes("cuda") > 0


def test_tta_intervals_in_the_result(series) -> None:
    plain = _predictor(None).predict(series)
    assert plain.tta_passes == 0 and plain.volume_interval_ml is None and plain.probability_interval is None
    assert plain.detected, "the seeded model must detect something on the phantom"
    tta_predictor = _predictor(3)
    tta = tta_predictor.predict(series)
    assert tta.tta_passes == 3
    assert (tta.volume_ml, tta.probability, tta.voxel_count) == (plain.volume_ml, plain.probability, plain.voxel_count)
    lo, hi = tta.volume_interval_ml
    assert 0.0 <= lo <= tta.volume_ml <= hi
    # at least the fixed part of the scale, times the normal 90 % quantile (nothing fitted)
    assert hi - tta.volume_ml >= 1.6448 * (0.05 * tta.volume_ml + 0.1) - 1e-3
    plo, phi = tta.probability_interval
    assert 0.0 <= plo <= tta.probability <= phi <= 1.0
    # a fitted quantile scales the half-width in proportion
    wide = _predictor(3, {"volume": {"q": 3.0}}).predict(series)
    assert (wide.volume_interval_ml[1] - wide.volume_ml) == pytest.approx((hi - tta.volume_ml) * 3.0 / 1.644854,
                                                                          rel=1e-3)
    # one quantile per side: the interval is as many scales below and above the estimate as each side says
    skew = _predictor(3, {"volume": {"q": 3.0, "q_below": 0.5, "q_above": 4.0}}).predict(series)
    scale = (hi - tta.volume_ml) / 1.644854
    assert skew.volume_ml == tta.volume_ml
    assert skew.volume_interval_ml[1] - skew.volume_ml == pytest.approx(4.0 * scale, rel=1e-3)
    assert skew.volume_ml - skew.volume_interval_ml[0] == pytest.approx(min(0.5 * scale, skew.volume_ml), rel=1e-3)
    doc = build_document("x", tta_predictor, series, tta, tta.timings_ms, None)
    assert doc.expansion.interval.level == 0.9 and doc.expansion.interval.passes == 3
    assert (doc.expansion.interval.low, doc.expansion.interval.high) == (plo, phi)
    assert doc.haematoma.volume_interval_ml == (lo, hi)
    body = doc.model_dump(mode="json")
    assert set(body["abstain"]) == {"value", "reasons"} and body["abstain"]["value"] == bool(tta.abstain_reasons)
    plain_doc = build_document("y", _predictor(0), series, plain, plain.timings_ms, None).model_dump(mode="json")
    assert plain_doc["expansion"]["interval"] is None and plain_doc["haematoma"]["volume_interval_ml"] is None
    # a document of a client that knows none of these fields still validates
    old = {k: v for k, v in plain_doc.items() if k != "abstain"}
    old["expansion"] = {k: v for k, v in old["expansion"].items() if k != "interval"}
    old["haematoma"] = {k: v for k, v in old["haematoma"].items() if k != "volume_interval_ml"}
    old["links"] = {"self": "/", "mask_nifti": "/m", "overlay_png": "/o"}
    assert PredictionResponse.model_validate(old).abstain is None


def test_abstain_reasons(series) -> None:
    settings = uncertainty.UncertaintySettings(max_probability_width=0.2, image_statistics={"bone_fraction": (0, 0.5)})
    kwargs = dict(touches_fov_edge=False, infratentorial=False, statistics={"bone_fraction": 0.2},
                  probability_interval=(0.3, 0.4), volume_interval=(9.0, 11.0), volume_ml=10.0, settings=settings)
    assert uncertainty.abstain_reasons(**kwargs) == []
    assert uncertainty.abstain_reasons(**{**kwargs, "touches_fov_edge": True}) == ["mask_at_fov_edge"]
    assert uncertainty.abstain_reasons(**{**kwargs, "infratentorial": True}) == ["infratentorial"]
    assert uncertainty.abstain_reasons(**{**kwargs, "probability_interval": (0.1, 0.5)}) == ["interval_too_wide"]
    assert uncertainty.abstain_reasons(**{**kwargs, "volume_interval": (2.0, 18.0)}) == ["interval_too_wide"]
    assert uncertainty.abstain_reasons(**{**kwargs, "statistics": {"bone_fraction": 0.7}}) == \
        ["image_statistics_out_of_range"]
    assert {str(r) for r in AbstainReason} == {"mask_at_fov_edge", "interval_too_wide", "infratentorial",
                                               "image_statistics_out_of_range"}
    # through the predictor: a recorded range the phantom falls outside, a width limit every interval exceeds
    block = {"image_statistics": {"soft_tissue_median_hu": [100.0, 200.0]}, "max_probability_width": 1e-9}
    result = _predictor(2, block).predict(series)
    assert "image_statistics_out_of_range" in result.abstain_reasons
    assert "interval_too_wide" in result.abstain_reasons
    assert ("mask_at_fov_edge" in result.abstain_reasons) is result.touches_fov_edge
    assert 30.0 <= result.image_statistics["soft_tissue_median_hu"] <= 40.0  # the phantom's brain is 35 HU


def test_fit_sets_the_width_limit_so_that_only_the_widest_intervals_abstain(tmp_path) -> None:
    from model_training.commands.fit_uncertainty import _fit, _intervals

    rng = np.random.default_rng(5)
    scans = []
    for _ in range(200):
        p, scale = float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.1, 0.6))
        risk = 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + rng.normal(0, 0.5))))
        scans.append({"detected": True, "volume_true_ml": 10.0, "volume_ml": float(10 + rng.normal(0, 1)),
                      "volume_scale": 1.0, "probability": p, "probability_scale": scale, "risk_image": float(risk)})
    block = _fit({"passes": 4, "scans": scans, "timings": []}, 0.9, tmp_path / "val" / "manifest.csv", 0.1)
    settings = uncertainty.UncertaintySettings.model_validate(block)
    assert block["probability"]["q"] is not None and "10%" in settings.limits_fitted_on
    widths = np.array([_intervals(s, settings)[1][1] - _intervals(s, settings)[1][0] for s in scans])
    assert 0.07 <= float((widths > settings.max_probability_width).mean()) <= 0.1
    covered = [lo <= s["risk_image"] <= hi for s in scans for lo, hi in [_intervals(s, settings)[1]]]
    assert 0.89 <= float(np.mean(covered)) <= 0.95


def test_fit_gives_each_side_of_the_volume_interval_its_own_quantile(tmp_path) -> None:
    from model_training.commands.fit_uncertainty import _fit, _intervals, _report

    def draw(seed: int) -> list[dict]:
        rng = np.random.default_rng(seed)
        scans = []
        for _ in range(400):  # the truth above the estimate by a long tail (under-segmentation), below by a little
            err = float(rng.exponential(3.0) if rng.random() < 0.5 else -rng.exponential(0.5))
            scans.append({"detected": True, "volume_true_ml": 20.0, "volume_ml": 20.0 - err, "volume_scale": 1.0})
        return scans

    fit = draw(11)
    block = _fit({"passes": 4, "scans": fit, "timings": []}, 0.9, tmp_path / "val" / "manifest.csv", 0.1)
    volume = block["volume"]
    assert "probability" not in block and "max_probability_width" not in block, "no probability truth: no limit"
    assert volume["q_above"] > 3 * volume["q_below"] > 0 and volume["q_below"] < volume["q"] < volume["q_above"]
    settings = uncertainty.UncertaintySettings.model_validate(block)
    rel = np.array([np.diff(_intervals(s, settings)[0])[0] / s["volume_ml"] for s in fit])
    assert 0.07 <= float((rel > settings.max_volume_width_rel).mean()) <= 0.1, "only the widest abstain"
    fresh = draw(12)
    report = _report({"passes": 4, "scans": fresh, "timings": []}, settings)
    assert 0.86 <= report["volume_coverage"] <= 0.95 and report["volume_truth_above_interval"] <= 0.08
    symmetric = uncertainty.UncertaintySettings.model_validate(
        _fit({"passes": 4, "scans": fit, "timings": []}, 0.9, tmp_path / "val" / "manifest.csv", 0.1,
             symmetric=True))
    assert symmetric.volume.q_below is None and symmetric.sides(symmetric.volume) == (volume["q"], volume["q"])
    width = np.mean([np.diff(_intervals(s, settings)[0])[0] for s in fresh])
    assert width < np.mean([np.diff(_intervals(s, symmetric)[0])[0] for s in fresh])
