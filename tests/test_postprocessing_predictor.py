"""The Predictor with post-processing settings from the weights manifest, on a DICOM phantom: a detection rule
that rejects the mask gives an empty mask and null probability with a reason; an accepted haematoma gets the
calibrated probability, and an inferior-posterior one the infratentorial flag and warning. The probability maps
are written onto the model grid at known LPS positions (mm), so the outcome does not depend on random weights.
Budget: a few seconds (one forward pass of the small model)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from service_fixtures import random_weights, write_phantom_series

from app.api.schemas import PredictionResponse
from app.api.service import build_response, render_files
from app.inference import Predictor, RawPrediction
from app.ingestion import load_series
from app.model.postprocessing import Calibration

PLATT = {"method": "platt", "slope": 0.5, "intercept": 0.3, "fitted_on": "tests"}


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory):
    paths = write_phantom_series(tmp_path_factory.mktemp("pp") / "series", n_slices=24, size=64, seed=2)
    return load_series([str(p) for p in paths])


def _predictor(post: dict) -> Predictor:
    weights = random_weights(0)
    weights.manifest = {"intended_use": "tests only", "postprocessing": post}
    return Predictor(weights, device="cpu")


def _blob(prepared, centre_lps: tuple[float, float, float], radius_mm: float, value: float) -> np.ndarray:
    """Probability map on the model grid: ``value`` inside a sphere (LPS mm), 0.05 elsewhere."""
    grid = prepared.grid
    nx, ny, nz = grid.GetSize()
    idx = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1).reshape(-1, 3)
    origin, spacing = np.asarray(grid.GetOrigin()), np.asarray(grid.GetSpacing())
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    points = origin + (idx * spacing) @ direction.T
    inside = np.linalg.norm(points - np.asarray(centre_lps), axis=1) <= radius_mm
    prob = np.full((nz, ny, nx), 0.05, np.float32)
    prob[idx[inside, 2], idx[inside, 1], idx[inside, 0]] = value
    return prob


def _json(predictor: Predictor, series, result) -> dict:
    body = build_response("p1", predictor, series, result, dict(result.timings_ms), None, "")
    PredictionResponse.model_validate(body)
    return body


def test_detection_failure_empties_the_mask_and_nulls_the_probability(series) -> None:
    predictor = _predictor({"detection": {"min_volume_ml": 5000.0}, "calibration": PLATT})
    assert predictor.postprocessing.detection.min_volume_ml == 5000.0
    result = predictor.predict(series)  # the real forward pass
    assert not result.detected and result.reason == "no_haematoma_detected"
    assert result.probability is None and result.predicted is None and 0.0 <= result.raw_probability <= 1.0
    assert result.volume_ml == 0.0 and result.abc2_volume_ml == 0.0 and result.voxel_count == 0
    assert not result.touches_fov_edge and not result.infratentorial
    assert sitk.GetArrayViewFromImage(result.mask).sum() == 0 and not result.source_slice_masks.any()
    assert result.source_slice_masks.shape == (len(series.slices), 64, 64)
    body = _json(predictor, series, result)
    assert body["expansion"]["probability"] is None and body["expansion"]["predicted"] is None
    assert body["expansion"]["reason"] == "no_haematoma_detected"
    assert body["expansion"]["raw_probability"] == result.raw_probability
    assert body["haematoma"]["detected"] is False and body["haematoma"]["infratentorial"] is False
    files = render_files(predictor, series, result)
    assert b"No haematoma detected" in files["overlay.png"] and files["seg.dcm"][128:132] == b"DICM"


def test_mean_probability_rule_and_calibrated_decision(series) -> None:
    predictor = _predictor({"detection": {"min_volume_ml": 0.5, "min_mean_probability": 0.8},
                            "calibration": PLATT})
    prepared = predictor.prepare(series)
    assert prepared.brain_centroid_lps is not None
    centre = (20.0, -10.0, 0.0)  # supratentorial, in the brain: the phantom's haematoma position
    faint = predictor.finish(series, prepared, RawPrediction(_blob(prepared, centre, 12.0, 0.7), 0.62, 1.0))
    assert not faint.detected and faint.segmented_volume_ml > 0.5 and faint.mean_probability < 0.8
    bright = predictor.finish(series, prepared, RawPrediction(_blob(prepared, centre, 12.0, 0.95), 0.62, 1.0))
    assert bright.detected and bright.reason is None and bright.mean_probability >= 0.8
    expected = Calibration.model_validate(PLATT).apply(0.62)
    assert bright.raw_probability == pytest.approx(0.62) and bright.probability == pytest.approx(expected)
    assert bright.predicted == (expected >= predictor.threshold) and bright.volume_ml == bright.segmented_volume_ml
    assert 4.0 < bright.volume_ml < 10.0  # a 12 mm sphere is 7.2 mL
    assert not bright.infratentorial
    body = _json(predictor, series, bright)
    assert body["haematoma"]["detected"] is True and body["expansion"]["probability"] == pytest.approx(expected)
    assert "infratentorial_haematoma" not in {w["code"] for w in body["input"]["warnings"]}


def test_inferior_posterior_haematoma_is_flagged_infratentorial(series) -> None:
    predictor = _predictor({})
    prepared = predictor.prepare(series)
    bx, by, bz = prepared.brain_centroid_lps
    below_behind = (bx, by + 40.0, bz - 35.0)
    result = predictor.finish(series, prepared, RawPrediction(_blob(prepared, below_behind, 10.0, 0.9), 0.4, 1.0))
    assert result.detected and result.infratentorial and result.probability == pytest.approx(0.4)  # identity
    body = _json(predictor, series, result)
    assert body["haematoma"]["infratentorial"] is True
    warning = next(w for w in body["input"]["warnings"] if w["code"] == "infratentorial_haematoma")
    assert "excluded infratentorial" in warning["message"] and warning["details"]["max_dz_mm"] == -20.0
    above = (bx, by + 40.0, bz + 10.0)  # posterior but superior: occipital, not infratentorial
    occipital = predictor.finish(series, prepared, RawPrediction(_blob(prepared, above, 10.0, 0.9), 0.4, 1.0))
    assert occipital.detected and not occipital.infratentorial
