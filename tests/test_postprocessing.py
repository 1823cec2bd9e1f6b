"""Post-processing settings (app/model/postprocessing.py, app/model/postprocessing_fit.py): calibration math, the
detection and infratentorial rules, centroids in LPS mm, fitting on seeded synthetic arrays, validation when
weights are saved and loaded, and the PNG / SEG of an empty (not detected) result. Budget: a few seconds."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydantic import ValidationError
from service_fixtures import small_model, small_plans, write_phantom_series

from app.model.postprocessing import (
    Calibration,
    DetectionRule,
    InfratentorialRule,
    Postprocessing,
    centroid_lps,
    centroid_offset_lps,
    logit,
    mean_inside,
    sigmoid,
)
from app.model.postprocessing_fit import fit_detection, fit_platt
from app.outputs import CompactResult, render_panels
from app.outputs.compact import NOT_DETECTED_LABEL
from app.outputs.label import LABEL_RGB, text_mask
from app.weights.registry import WeightsError, load_weights, register_in_registry, save_weights


# --- calibration --------------------------------------------------------------------------------------------
def test_identity_and_platt_calibration_math() -> None:
    assert Calibration().method == "identity" and Calibration().apply(0.37) == 0.37
    platt = Calibration(method="platt", slope=2.0, intercept=-1.0)
    assert platt.apply(0.5) == pytest.approx(1.0 / (1.0 + math.exp(1.0)), abs=1e-12)
    p = 0.8
    expected = 1.0 / (1.0 + math.exp(-(2.0 * math.log(p / (1 - p)) - 1.0)))
    assert platt.apply(p) == pytest.approx(expected, abs=1e-12)
    # the raw probability is clipped to [1e-6, 1 - 1e-6] before the logit: 0 and 1 stay finite
    lo, hi = platt.apply(0.0), platt.apply(1.0)
    assert lo == pytest.approx(1.0 / (1.0 + math.exp(-(2.0 * math.log(1e-6 / (1 - 1e-6)) - 1.0))), rel=1e-6)
    assert 0.0 < lo < hi < 1.0
    unit = Calibration(method="platt", slope=1.0, intercept=0.0)
    grid = np.linspace(0.01, 0.99, 17)
    np.testing.assert_allclose(unit.apply_array(grid), grid, atol=1e-12)
    assert np.all(np.diff(platt.apply_array(grid)) > 0)  # monotone: the ranking (AUC) is kept
    np.testing.assert_allclose(sigmoid(logit(grid)), grid, atol=1e-12)
    assert float(sigmoid(-800.0)) == 0.0 and float(sigmoid(800.0)) == 1.0  # no overflow warning


@pytest.mark.parametrize("block", [
    {"method": "isotonic"}, {"slope": 0.0}, {"slope": -1.0}, {"slope": float("nan")}, {"intercept": "x"},
    {"unknown": 1},
])
def test_calibration_validation_refuses_bad_blocks(block: dict) -> None:
    with pytest.raises(ValidationError):
        Calibration.model_validate(block)


# --- detection and infratentorial rules ---------------------------------------------------------------------
def test_detection_rule_boundaries_and_defaults() -> None:
    rule = DetectionRule()
    assert rule.min_volume_ml == 0.5 and rule.min_mean_probability == 0.0
    assert rule.detected(0.5, 0.0) and not rule.detected(0.4999, 1.0) and not rule.detected(0.0, 0.0)
    strict = DetectionRule(min_volume_ml=2.0, min_mean_probability=0.7)
    assert strict.detected(2.0, 0.7) and not strict.detected(10.0, 0.69) and not strict.detected(1.9, 0.99)
    for bad in ({"min_volume_ml": 0.0}, {"min_mean_probability": 1.5}, {"min_volume_ml": float("inf")}):
        with pytest.raises(ValidationError):
            DetectionRule.model_validate(bad)
    assert mean_inside(np.array([0.2, 0.6, 0.9]), np.array([0, 1, 1])) == pytest.approx(0.75)


def test_detection_density_guard_rejects_a_mask_no_denser_than_brain() -> None:
    guarded = DetectionRule(min_volume_ml=2.0, min_dense_hu=45.0)
    assert guarded.detected(5.0, 0.5, 60.0) and guarded.detected(5.0, 0.5, 45.0)
    assert not guarded.detected(5.0, 0.5, 31.0)  # brain-density tissue
    assert not guarded.detected(5.0, 0.5, None)  # nothing measured: not a detection
    assert not guarded.detected(1.0, 0.5, 80.0)  # the fitted limits still apply
    assert DetectionRule().detected(5.0, 0.5, 10.0)  # off unless set
    with pytest.raises(ValidationError):
        DetectionRule(min_dense_hu=-1.0)
    assert mean_inside(np.ones(3), np.zeros(3)) == 0.0


def test_infratentorial_rule_needs_inferior_and_posterior() -> None:
    rule = InfratentorialRule()
    assert rule.max_dz_mm == -20.0 and rule.min_dy_mm == 15.0
    assert rule.applies((0.0, 30.0, -35.0))  # cerebellar: 35 mm below, 30 mm behind the brain centroid
    assert not rule.applies((0.0, 30.0, -10.0))  # posterior but supratentorial (occipital)
    assert not rule.applies((0.0, -20.0, -35.0))  # inferior but anterior (temporal / frontal base)
    assert rule.applies((5.0, 15.0, -20.0)) and not rule.applies(None)
    assert centroid_offset_lps((1.0, 2.0, 3.0), (0.5, -1.0, 4.0)) == (0.5, 3.0, -1.0)
    assert centroid_offset_lps(None, (0.0, 0.0, 0.0)) is None


def test_centroid_lps_matches_label_shape_statistics() -> None:
    arr = np.zeros((6, 20, 30), np.uint8)
    arr[1:4, 5:9, 10:22] = 1
    arr[5, 0, 0] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin((-12.0, 30.5, -40.0))
    img.SetSpacing((0.7, 0.9, 5.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(img)
    np.testing.assert_allclose(centroid_lps(arr, img), stats.GetCentroid(1), atol=1e-9)
    assert centroid_lps(np.zeros_like(arr), img) is None
    with pytest.raises(ValueError):
        centroid_lps(arr[:, :, :5], img)


def test_postprocessing_from_manifest_defaults_and_partial_blocks() -> None:
    assert Postprocessing.from_manifest({}) == Postprocessing() == Postprocessing.from_manifest(None)
    post = Postprocessing.from_manifest({"postprocessing": {"calibration": {"method": "platt", "slope": 0.8}}})
    assert post.calibration.slope == 0.8 and post.calibration.intercept == 0.0 and post.detection == DetectionRule()
    with pytest.raises(ValidationError):
        Postprocessing.from_manifest({"postprocessing": {"detection": {"min_volume_ml": -1}}})
    with pytest.raises(ValidationError):
        Postprocessing.from_manifest({"postprocessing": {"smoothing": {}}})
    with pytest.raises(ValidationError):
        post.detection.min_volume_ml = 3.0  # type: ignore[misc]  # frozen


# --- fitting ------------------------------------------------------------------------------------------------
def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw probabilities of an over-confident model: the truth is sigmoid(0.5 * logit(p) - 0.7)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.5, n)
    raw = sigmoid(z)
    labels = (rng.random(n) < sigmoid(0.5 * z - 0.7)).astype(int)
    return raw, labels


def test_fit_platt_recovers_the_generating_calibration() -> None:
    raw, labels = _miscalibrated(6000, seed=11)
    slope, intercept = fit_platt(raw, labels)
    assert slope == pytest.approx(0.5, abs=0.06) and intercept == pytest.approx(-0.7, abs=0.1)
    assert fit_platt(raw, labels) == (slope, intercept)  # deterministic
    cal = Calibration(method="platt", slope=slope, intercept=intercept).apply_array(raw)

    def log_loss(p: np.ndarray) -> float:
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    assert log_loss(cal) < log_loss(raw) - 0.05


def test_fit_platt_is_finite_on_separable_data_and_refuses_bad_input() -> None:
    raw = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    slope, intercept = fit_platt(raw, [0, 0, 0, 1, 1, 1])  # smoothed targets: a finite optimum
    assert 0.0 < slope < 50.0 and math.isfinite(intercept)
    with pytest.raises(ValueError, match="both classes"):
        fit_platt(raw, [1] * 6)
    with pytest.raises(ValueError, match="rank"):
        fit_platt(raw, [1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError):
        fit_platt([0.2, 1.3], [0, 1])
    with pytest.raises(ValueError):
        fit_platt([0.2, 0.4], [0, 2])
    with pytest.raises(ValueError, match="equal"):
        fit_platt([0.4, 0.4, 0.4], [0, 1, 0])


def _brute_force(volumes: np.ndarray, probs: np.ndarray, ich: np.ndarray, vol_grid, prob_grid,
                 limit: float) -> tuple[float, float, float]:
    best = None
    for v in vol_grid:
        for q in prob_grid:
            det = (volumes >= v) & (probs >= q)
            if det[ich == 0].mean() <= limit:
                key = (-det[ich == 1].mean(), v, q)
                best = key if best is None or key < best else best
    assert best is not None
    return -best[0], best[1], best[2]


def test_fit_detection_smallest_volume_at_five_percent_false_positives() -> None:
    rng = np.random.default_rng(5)
    n_free, n_ich = 400, 300
    free_vol = np.where(rng.random(n_free) < 0.6, 0.0, rng.exponential(0.6, n_free))  # spurious specks
    ich_vol = np.concatenate([rng.lognormal(np.log(12.0), 0.9, n_ich - 20), rng.uniform(0.1, 1.0, 20)])
    volumes = np.concatenate([free_vol, ich_vol])
    probs = np.where(volumes > 0, 0.75, 0.0)
    ich = np.concatenate([np.zeros(n_free, int), np.ones(n_ich, int)])
    rule = fit_detection(volumes, probs, ich, fitted_on="synthetic validation")
    detected = (volumes >= rule.min_volume_ml) & (probs >= rule.min_mean_probability)
    assert detected[ich == 0].mean() <= 0.05 and 0.1 <= rule.min_volume_ml <= 5.0
    smaller = (volumes >= round(rule.min_volume_ml - 0.1, 1)) & (probs >= rule.min_mean_probability)
    assert smaller[ich == 0].mean() > 0.05  # the next smaller grid volume would exceed the limit
    from app.model.postprocessing_fit import DEFAULT_PROBABILITY_GRID, DEFAULT_VOLUME_GRID_ML

    sens, vol, prob = _brute_force(volumes, probs, ich, DEFAULT_VOLUME_GRID_ML, DEFAULT_PROBABILITY_GRID, 0.05)
    assert (rule.min_volume_ml, rule.min_mean_probability) == (vol, prob)
    assert detected[ich == 1].mean() == pytest.approx(sens)
    assert rule.fitted_on.startswith("synthetic validation: 300 cases with and 400 without")
    assert fit_detection(volumes, probs, ich, fitted_on="synthetic validation") == rule  # deterministic


def test_fit_detection_uses_the_mean_probability_when_it_separates_better() -> None:
    rng = np.random.default_rng(8)
    free_vol = rng.uniform(0.5, 4.0, 200)  # large but faint false positives (e.g. beam hardening)
    ich_vol = rng.uniform(0.3, 30.0, 200)
    volumes = np.concatenate([free_vol, ich_vol])
    probs = np.concatenate([rng.uniform(0.5, 0.62, 200), rng.uniform(0.7, 0.95, 200)])
    ich = np.repeat([0, 1], 200)
    rule = fit_detection(volumes, probs, ich)
    assert rule.min_mean_probability >= 0.65 and rule.min_volume_ml == 0.1
    with pytest.raises(ValueError, match="no candidate"):
        fit_detection(volumes, np.full(400, 0.99), ich, volume_grid_ml=[0.1, 0.2])
    with pytest.raises(ValueError, match="with and without"):
        fit_detection([1.0, 2.0], [0.8, 0.9], [1, 1])
    with pytest.raises(ValueError):
        fit_detection([1.0, -2.0], [0.8, 0.9], [0, 1])


# --- weights registry -----------------------------------------------------------------------------------------
def _save(root: Path, version: str, post: dict | None) -> Path:
    model, config = small_model(0)
    manifest = {"name": "pp", "version": version, "threshold": 0.4}
    if post is not None:
        manifest["postprocessing"] = post
    out = save_weights(model, small_plans(), config, root / f"pp-{version}", manifest, "# card\n")
    register_in_registry(root, "pp", version, "2024-01-01T00:00:00Z", make_default=False)
    return out


def test_registry_reads_validates_and_defaults_the_postprocessing_block(tmp_path: Path) -> None:
    block = {"detection": {"min_volume_ml": 1.2, "min_mean_probability": 0.6, "fitted_on": "val fold"},
             "calibration": {"method": "platt", "slope": 0.9, "intercept": -0.2, "fitted_on": "val fold"},
             "infratentorial": {"max_dz_mm": -25.0, "min_dy_mm": 10.0}}
    out = _save(tmp_path, "1.0.0", block)
    loaded = load_weights(tmp_path, "1.0.0")
    assert loaded.postprocessing == Postprocessing.model_validate(block)
    written = json.loads((out / "manifest.json").read_text())["postprocessing"]
    assert Postprocessing.model_validate(written) == Postprocessing.model_validate(block)
    _save(tmp_path, "1.1.0", None)
    assert load_weights(tmp_path, "1.1.0").postprocessing == Postprocessing()  # absent: defaults
    with pytest.raises(WeightsError) as info:
        _save(tmp_path, "1.2.0", {"calibration": {"method": "beta"}})
    assert info.value.code == "invalid_postprocessing"
    manifest = json.loads((out / "manifest.json").read_text())  # edited after registration (not checksummed)
    manifest["postprocessing"]["detection"]["min_volume_ml"] = -1.0
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path, "1.0.0")
    assert info.value.code == "invalid_postprocessing" and "min_volume_ml" in info.value.message


# --- outputs of a result without a haematoma ------------------------------------------------------------------
def test_empty_result_renders_labelled_png_and_empty_seg(tmp_path: Path) -> None:
    paths = write_phantom_series(tmp_path, n_slices=6, size=32)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    arr = np.zeros((6, 32, 32), np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 5.0))
    series = SimpleNamespace(source_headers=headers, hu_array=np.full(arr.shape, 40.0, np.float32))
    compact = CompactResult.from_arrays(series, img, arr, algorithm_name="t", algorithm_version="1",
                                        detected=False)
    files = compact.render_all()
    png = files["overlay.png"]
    assert b"Comment\x00" + NOT_DETECTED_LABEL.encode() in png
    plain = render_panels(compact.overlay_hu, arr[list(compact.overlay_indices)], list(compact.overlay_indices),
                          6, compact.spacing_zyx)
    assert b"Comment" not in plain and len(png) != len(plain)
    from test_outputs import _decode_png_rgb

    rgb, rgb_plain = _decode_png_rgb(png), _decode_png_rgb(plain)
    assert rgb.shape[0] > rgb_plain.shape[0] and rgb.shape[1] == rgb_plain.shape[1]
    ink = (rgb == LABEL_RGB).all(axis=2)
    assert ink.any() and not ink[-rgb_plain.shape[0]:].any()  # the label sits in the banner above the panels
    assert text_mask("NO", 1).shape == (7, 11) and text_mask("N", 3).sum() == 9 * text_mask("N").sum()
    seg = hd.seg.segread(io.BytesIO(files["seg.dcm"]))  # highdicom: an all-empty segment is a valid SEG
    assert int(seg.get_volume(combine_segments=True).array.sum()) == 0
    assert int(seg.NumberOfFrames) == len(headers)
    assert sitk.GetArrayFromImage(compact.mask_image()).sum() == 0
