"""Evaluation through the serving path, with the registered demo weights (weights/registry.json):

* ``python -m model_training evaluate --weights`` and the real HTTP service give the same probability and mask
  volume for one synthetic DICOM case;
* the trainer's fast per-epoch validation (``predict_cached`` on the cached model-grid tensor) equals the serving
  path on that case: same input tensor, probability within 1e-4, identical model-grid mask;
* a seeded evaluation of six synthetic NIfTI cases (some haematoma-free, some with intraventricular
  blood) fills every report section, and the numbers follow from the per-case rows.

Budget: about 35 s on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from service_fixtures import start_server

from model_training.cli import main
from model_training.cohort.cache import read_image_hu
from model_training.evaluation.serving_path import (
    evaluate_weights,
    ingest,
    read_evaluation_cases,
)
from model_training.evaluation.serving_report import logistic_calibration, reliability_bins
from model_training.synthetic.cohort import write_cohort

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
VERSION = json.loads((WEIGHTS / "registry.json").read_text())["default"].rsplit("-", 1)[1]  # the service's
SEED = 3  # 6 cases: 2 haematoma-free; 4 haematomas (one < 5 mL, 3 with intraventricular blood, 2 expanded)
N_CASES = 6
DICOM_SEED = 4


@pytest.fixture(scope="module")
def dicom_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Case SYN0001 of cohort ``DICOM_SEED`` as a DICOM series: an 18.7 mL lobar haematoma, large enough for every
    detection rule, so that the service and the evaluation compare a non-empty mask."""
    return write_cohort(1, tmp_path_factory.mktemp("dicom"), DICOM_SEED, formats=("dicom",))


@pytest.fixture(scope="module")
def nifti_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(N_CASES, tmp_path_factory.mktemp("nifti"), SEED, formats=("nifti",), ich_free_fraction=0.3)


def test_evaluate_weights_matches_the_http_service(dicom_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["evaluate", "--weights", str(WEIGHTS), "--version", VERSION, "--manifest", str(dicom_manifest),
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((out / "serving_report.json").read_text())
    assert report["model"]["version"] == VERSION and report["n"]["cases"] == 1
    row = report["cases"][0]
    assert row["has_ich"] and row["dice"] is not None and row["voxel_count"] > 0

    server = start_server(tmp_path, env={"ICH_WARMUP_PASSES": "0"}, weights_dir=WEIGHTS)
    try:
        files = sorted((dicom_manifest.parent / "cases" / "SYN0001" / "dicom").iterdir())
        r = httpx.post(f"{server.base_url}/v1/predictions", timeout=60.0,
                       files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in files])
        assert r.status_code == 200, r.text
        body = r.json()
    finally:
        assert server.stop() in (0, -signal.SIGTERM), server.log_text()[-3000:]
    assert body["model"]["version"] == VERSION
    expansion, haematoma = body["expansion"], body["haematoma"]
    assert expansion.get("raw_probability", expansion["probability"]) == pytest.approx(row["raw_probability"],
                                                                                       abs=1e-5)
    if row["probability"] is None:
        assert expansion["probability"] is None
    else:
        assert expansion["probability"] == pytest.approx(row["probability"], abs=1e-5)
    assert haematoma["voxel_count"] == row["voxel_count"]
    assert haematoma["volume_ml"] == pytest.approx(row["volume_ml"], rel=1e-9)


def test_fast_validation_path_equals_the_serving_path(dicom_manifest: Path, tmp_path: Path) -> None:
    from app.inference import Predictor
    from app.weights.registry import load_weights
    from model_training.cohort.cache import build_cache
    from model_training.cohort.manifest import read_manifest
    from model_training.training.trainer import predict_cached

    weights = load_weights(WEIGHTS, VERSION)
    plans = weights.plans
    case = read_evaluation_cases(dicom_manifest)[0]
    record = read_manifest(dicom_manifest).cases[0]
    (cached,) = build_cache([record], plans, tmp_path / "cache", workers=1, progress=False)
    fast = predict_cached(weights.model, [cached], [case.case_id], [case.label], plans.mask_threshold, "cpu")[0]

    predictor = Predictor(weights, "cpu")  # on CPU the runner leaves the model as it is (float32, eager)
    series = ingest(case.image)
    prepared = predictor.prepare(series)
    raw = predictor.infer(prepared.tensor)
    with np.load(cached) as z:
        tensor = z["tensor"]
    np.testing.assert_array_equal(tensor, prepared.tensor)
    assert abs(fast["probability"] - raw.expansion_probability) <= 1e-4
    result = predictor.finish(series, prepared, raw)
    assert result.network_probability == pytest.approx(raw.expansion_probability, abs=1e-6)

    serving_mask = (raw.probability_map >= plans.mask_threshold).astype(np.uint8)
    probe = tmp_path / "serving_mask.npz"  # the fast path scored against the serving path's model-grid mask
    np.savez(probe, tensor=tensor, mask=serving_mask)
    check = predict_cached(weights.model, [probe], [case.case_id], [case.label], plans.mask_threshold, "cpu")[0]
    assert check["predicted_voxels"] == check["true_voxels"] == int(serving_mask.sum()) > 0
    assert check["dice"] == 1.0 and fast["predicted_voxels"] == int(serving_mask.sum())


def test_seeded_evaluation_fills_every_section(nifti_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = evaluate_weights(WEIGHTS, VERSION, nifti_manifest, out, device="cpu")
    assert {p.name for p in out.iterdir()} >= {"serving_report.json", "serving_report.md", "cases.csv",
                                               "reliability.png", "bland_altman.png"}
    assert (out / "reliability.png").stat().st_size > 1000 and (out / "bland_altman.png").stat().st_size > 1000
    assert json.loads((out / "serving_report.json").read_text())["detection"] == report["detection"]
    rows = report["cases"]
    assert len(rows) == N_CASES and all(r["refusal"] is None for r in rows)
    fitting_keys = {"raw_probability", "volume_ml", "segmented_volume_ml", "mean_probability", "has_ich", "label"}
    assert all(fitting_keys <= r.keys() for r in rows)
    ich = [r for r in rows if r["has_ich"]]
    free = [r for r in rows if not r["has_ich"]]
    assert len(free) == 2 and len(ich) == 4

    # NIfTI goes through the service's ingestion, on the file's own grid
    first = read_evaluation_cases(nifti_manifest)[0].image
    ingested, reference = ingest(first), read_image_hu(first)
    assert ingested.source_kind == "nifti"
    for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(ingested.image, attr)() == getattr(reference, attr)()
    np.testing.assert_array_equal(ingested.hu_array, sitk.GetArrayFromImage(reference))

    # ground truth on the original grid: the true volume is the manifest's baseline volume
    with nifti_manifest.open() as fh:
        baseline = {r["case_id"]: float(r["baseline_volume_ml"]) for r in csv.DictReader(fh)}
    for r in rows:
        assert r["true_volume_ml"] == pytest.approx(baseline[r["case_id"]], abs=2e-3)
        assert (r["label"] is None) == (not r["has_ich"]) and (r["dice"] is None) == (not r["has_ich"])
        assert r["dice"] is None or 0.0 <= r["dice"] <= 1.0
        assert 0.0 <= r["raw_probability"] <= 1.0

    d = report["detection"]
    assert d["n_ich"] == len(ich) and d["n_ich_free"] == len(free)
    assert d["sensitivity"]["k"] == sum(r["detected"] for r in ich)
    assert d["specificity"]["k"] == sum(not r["detected"] for r in free)
    assert d["ich_free_reported_rate"]["k"] == sum(r["volume_ml"] > 0 for r in free)

    s = report["segmentation"]
    dice = [r["dice"] for r in ich]
    assert s["n"] == len(ich) and s["median"] == pytest.approx(float(np.median(dice)))
    assert s["by_ivh"]["ivh"]["n"] + s["by_ivh"]["no_ivh"]["n"] == len(ich)
    assert s["by_volume"]["lt_5ml"]["n"] >= 1 and s["by_volume"]["lt_5ml"]["n"] + s["by_volume"]["ge_5ml"]["n"] == len(ich)

    v = report["volume"]
    diff = np.array([r["volume_ml"] - r["true_volume_ml"] for r in ich])
    assert v["planimetric"]["bland_altman"]["bias_ml"] == pytest.approx(float(diff.mean()))
    rel = np.abs(diff) / np.array([r["true_volume_ml"] for r in ich])
    assert v["planimetric"]["within_20pct"]["all"] == pytest.approx(float((rel <= 0.2).mean()))
    assert v["abc2"]["bland_altman"]["n"] == len(ich)

    i = report["ivh_in_mask"]
    assert i["n_cases_with_ivh"] >= 1 and 0.0 <= i["max"] <= 1.0

    e = report["expansion"]
    sub = [r for r in ich if r["detected"] and r["label"] is not None]
    y = np.array([r["label"] for r in sub], dtype=float)
    p = np.array([r["probability"] if r["probability"] is not None else r["raw_probability"] for r in sub])
    assert e["n"] == len(sub) and 0 < e["n_positive"] < e["n"]
    assert e["brier"] == pytest.approx(float(np.mean((p - y) ** 2)))
    assert e["brier_reference"] == pytest.approx(y.mean() * (1 - y.mean()))
    for key in ("auc", "auc_raw", "auc_risk_true", "auc_risk_image", "auc_raw_all_labelled"):
        assert 0.0 <= e[key]["lower"] <= e[key]["estimate"] <= e[key]["upper"] <= 1.0, key
    assert sum(b["n"] for b in e["reliability"]["bins"]) == len(sub) and len(e["reliability"]["bins"]) == 10
    assert set(e["calibration"]) >= {"slope", "intercept", "converged"}
    md = (out / "serving_report.md").read_text()
    for heading in ("## Detection", "## Segmentation", "## Volume agreement", "## Expansion", "Brier"):
        assert heading in md


def test_calibration_fit_recovers_a_known_logistic_model() -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0.02, 0.98, 20000)
    truth = 1.0 / (1.0 + np.exp(-(0.5 + 2.0 * np.log(p / (1 - p)))))  # slope 2, intercept 0.5
    y = (rng.random(p.size) < truth).astype(float)
    fit = logistic_calibration(y, p)
    assert fit["converged"] and fit["slope"] == pytest.approx(2.0, abs=0.1)
    assert fit["intercept"] == pytest.approx(0.5, abs=0.1)
    lo, hi = fit["slope_ci95"]
    assert lo < 2.0 < hi and hi - lo < 0.3  # the Wald interval holds the truth and narrows with 20000 cases
    small = logistic_calibration(y[:300], p[:300])
    assert small["slope_ci95"][1] - small["slope_ci95"][0] > 3 * (hi - lo)
    separated = logistic_calibration(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert separated["slope"] is None and not separated["converged"]
    bins = reliability_bins(np.array([0.0, 1.0, 1.0]), np.array([0.05, 0.95, 1.0]))
    assert [b["n"] for b in bins] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins[9]["observed"] == 1.0 and math.isclose(bins[0]["mean_predicted"], 0.05)
