"""Haematoma growth between a baseline and a follow-up prediction (app/comparison.py), through the core, a REAL
``python -m app serve`` on loopback (``POST /v1/comparisons``) and ``python -m app compare``:

* the rule (> 6 mL or > 33 %; >= as the variant), growth fields, no baseline haematoma -> null with a reason;
* identity hashing and acquisition time parsing; refusals: different patients, follow-up not later, no identity /
  no date (a NIfTI volume), each with its code, 422 problem+json from the API and exit 2 from the CLI;
* the API and the CLI give the same volumes and growth for the same two studies; no patient ID in the server log.

Budget: about 25-35 s on 2 CPU cores (one server start, five small uploads, two CLI subprocesses).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest
from nifti_factory import write_phantom_nifti
from service_fixtures import ServerProcess, make_weights_dir, start_server, write_phantom_series, zip_bytes

from app.comparison import (
    ExpansionRule,
    ScanSubject,
    acquisition_datetime,
    compare,
    expanded,
    patient_key,
)
from app.errors import ComparisonError, ComparisonRefusal

ROOT = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2024, 1, 1, 12, 0)
MODEL_SEED = 5  # a small random model that segments (and so detects) something on the phantom


def subject(volume: float, hours: float = 0.0, key: str | None = "k", detected: bool = True,
            when: dt.datetime | None = T0) -> ScanSubject:
    return ScanSubject(prediction_id=f"p{hours}", study_instance_uid="1.2", series_instance_uid="1.2.3",
                       patient_key=key, acquired_at=None if when is None else when + dt.timedelta(hours=hours),
                       detected=detected, volume_ml=volume)


@pytest.mark.parametrize(("baseline", "followup", "strict", "inclusive"), [
    (20.0, 26.0, False, True),  # +6 mL exactly, +30 %: the absolute rule decides
    (30.0, 35.9, False, False),  # +5.9 mL, +19.7 %
    (30.0, 36.01, True, True),
    (10.0, 13.3, False, True),  # +33 % exactly
    (10.0, 13.31, True, True),
    (20.0, 14.0, False, False),  # shrinking
])
def test_rule_strict_and_inclusive(baseline: float, followup: float, strict: bool, inclusive: bool) -> None:
    assert expanded(baseline, followup) is strict
    assert expanded(baseline, followup, ExpansionRule(inclusive=True)) is inclusive
    doc = compare(subject(baseline), subject(followup, 22.0), ExpansionRule(inclusive=True))
    assert doc.expansion.value is inclusive and doc.expansion.inclusive and ">=" in doc.expansion.definition
    assert doc.growth_ml == pytest.approx(followup - baseline)
    assert doc.growth_percent == pytest.approx(100 * (followup - baseline) / baseline, abs=1e-3)
    assert doc.interval_hours == pytest.approx(22.0)


def test_no_baseline_haematoma_gives_no_label() -> None:
    doc = compare(subject(0.0, detected=False), subject(8.0, 24.0))
    assert doc.expansion.value is None and doc.expansion.reason == "no_baseline_haematoma"
    assert doc.growth_percent is None and doc.growth_ml == pytest.approx(8.0)


@pytest.mark.parametrize(("followup", "code"), [
    (subject(12.0, 24.0, key="other"), ComparisonRefusal.DIFFERENT_PATIENTS),
    (subject(12.0, -1.0), ComparisonRefusal.FOLLOWUP_NOT_LATER),
    (subject(12.0, 0.0), ComparisonRefusal.FOLLOWUP_NOT_LATER),
    (subject(12.0, 24.0, key=None), ComparisonRefusal.PATIENT_IDENTITY_UNKNOWN),
    (subject(12.0, 24.0, when=None), ComparisonRefusal.ACQUISITION_TIME_UNKNOWN),
])
def test_refusals(followup: ScanSubject, code: ComparisonRefusal) -> None:
    with pytest.raises(ComparisonError) as err:
        compare(subject(10.0), followup)
    assert err.value.code == code and "other" not in err.value.message
    if code in (ComparisonRefusal.PATIENT_IDENTITY_UNKNOWN, ComparisonRefusal.ACQUISITION_TIME_UNKNOWN):
        # a pairing vouched for by a cohort manifest accepts what cannot be checked
        assert compare(subject(10.0), followup, paired_by_caller=True).growth_ml == pytest.approx(2.0)
    else:  # ... but never a contradiction
        with pytest.raises(ComparisonError):
            compare(subject(10.0), followup, paired_by_caller=True)


def test_identity_key_and_acquisition_time() -> None:
    a = pydicom.Dataset()
    a.PatientID, a.PatientName = "MRN-0042", "Doe^Jane"
    b = pydicom.Dataset()
    b.PatientID, b.PatientName = " mrn-0042", "DOE^JANE^^"
    c = pydicom.Dataset()
    c.PatientID = "MRN-0043"
    assert patient_key(a) == patient_key(b) != patient_key(c)
    assert "0042" not in patient_key(a) and len(patient_key(a)) == 64
    assert patient_key(a, b"key-1") != patient_key(a, b"key-2")
    assert patient_key(pydicom.Dataset()) is None
    d = pydicom.Dataset()
    d.StudyDate, d.StudyTime = "20240101", "120000"
    assert acquisition_datetime(d) == T0
    d.SeriesDate, d.SeriesTime = "20240102", "0830"
    assert acquisition_datetime(d) == dt.datetime(2024, 1, 2, 8, 30)
    d.AcquisitionDateTime = "20240103101500.250000+0100"
    assert acquisition_datetime(d) == dt.datetime(2024, 1, 3, 10, 15, 0, 250000)
    assert acquisition_datetime(pydicom.Dataset()) is None


# --- through the service and the CLI --------------------------------------------------------------------------
def write_study(folder: Path, seed: int, patient_id: str, date: str, time: str) -> Path:
    """A small DICOM phantom series of one patient acquired at ``date`` ``time`` (YYYYMMDD, HHMMSS)."""
    for path in write_phantom_series(folder, n_slices=12, size=64, seed=seed):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = patient_id, f"Test^{patient_id}"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = time
        ds.save_as(path, enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("comparison")
    out = {
        "baseline": write_study(root / "baseline", 4, "CMP-PATIENT-1", "20240101", "120000"),
        "followup": write_study(root / "followup", 5, "CMP-PATIENT-1", "20240102", "100000"),
        "other": write_study(root / "other", 6, "CMP-PATIENT-2", "20240102", "110000"),
        "earlier": write_study(root / "earlier", 7, "CMP-PATIENT-1", "20231231", "090000"),
    }
    out["nifti"] = write_phantom_nifti(root / "volume.nii.gz", n_slices=12, size=64)
    out["weights"] = make_weights_dir(root / "weights", seed=MODEL_SEED)
    return out


@pytest.fixture(scope="module")
def server(studies: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    srv = start_server(tmp_path_factory.mktemp("comparison_server"), weights_dir=studies["weights"], ready_timeout=240)
    yield srv
    srv.stop()


def _predict(server: ServerProcess, path: Path) -> str:
    if path.is_dir():
        kwargs = {"content": zip_bytes(sorted(path.glob("*.dcm"))), "headers": {"Content-Type": "application/zip"}}
    else:
        kwargs = {"content": path.read_bytes(), "headers": {"Content-Type": "application/gzip"}}
    r = httpx.post(f"{server.base_url}/v1/predictions", timeout=120, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_comparisons_through_the_api_and_the_cli(server: ServerProcess, studies: dict[str, Path]) -> None:
    ids = {name: _predict(server, studies[name]) for name in ("baseline", "followup", "other", "earlier", "nifti")}
    docs = {name: httpx.get(f"{server.base_url}/v1/predictions/{pid}", timeout=30).json() for name, pid in ids.items()}
    url = f"{server.base_url}/v1/comparisons"

    r = httpx.post(url, json={"baseline": ids["baseline"], "followup": ids["followup"]}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    b, f = docs["baseline"]["haematoma"], docs["followup"]["haematoma"]
    assert body["baseline"]["volume_ml"] == pytest.approx(b["volume_ml"], abs=1e-4)
    assert body["followup"]["volume_ml"] == pytest.approx(f["volume_ml"], abs=1e-4)
    assert body["growth_ml"] == pytest.approx(f["volume_ml"] - b["volume_ml"], abs=2e-4)
    assert body["interval_hours"] == pytest.approx(22.0)
    assert b["detected"], "the seeded model must detect something on the baseline phantom"
    assert body["growth_percent"] == pytest.approx(100 * body["growth_ml"] / b["volume_ml"], abs=1e-2)
    assert body["expansion"]["value"] is expanded(b["volume_ml"], f["volume_ml"])
    assert body["baseline"]["prediction_id"] == ids["baseline"]
    inclusive = httpx.post(url, json={"baseline": ids["baseline"], "followup": ids["followup"], "inclusive": True},
                           timeout=30).json()
    assert inclusive["expansion"]["inclusive"] is True
    assert inclusive["expansion"]["value"] is expanded(b["volume_ml"], f["volume_ml"], ExpansionRule(inclusive=True))

    for pair, code in ((("baseline", "other"), "different_patients"), (("followup", "baseline"), "followup_not_later"),
                       (("baseline", "earlier"), "followup_not_later"),
                       (("baseline", "nifti"), "patient_identity_unknown")):
        r = httpx.post(url, json={"baseline": ids[pair[0]], "followup": ids[pair[1]]}, timeout=30)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert r.json()["code"] == code and "CMP-PATIENT" not in r.text
    r = httpx.post(url, json={"baseline": "0" * 32, "followup": ids["followup"]}, timeout=30)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = httpx.post(url, json={"baseline": ids["baseline"]}, timeout=30)
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    assert "/v1/comparisons" in httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()["paths"]
    assert "CMP-PATIENT" not in server.log_text() and "Test^" not in server.log_text()

    # the CLI on the same two studies: the same document (ids aside)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "app", "compare", "--weights-dir", str(studies["weights"]), "--device", "cpu"]
    run = subprocess.run([*cmd, str(studies["baseline"]), str(studies["followup"])], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    cli = json.loads(run.stdout)
    for key in ("growth_ml", "growth_percent", "interval_hours", "expansion"):
        assert cli[key] == body[key], key
    for role in ("baseline", "followup"):
        assert {k: v for k, v in cli[role].items() if k != "prediction_id"} == \
            {k: v for k, v in body[role].items() if k != "prediction_id"}
    run = subprocess.run([*cmd, str(studies["baseline"]), str(studies["other"])], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and json.loads(run.stderr)["code"] == "different_patients"
    assert "CMP-PATIENT" not in run.stderr + run.stdout
