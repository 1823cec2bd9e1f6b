"""``python -m app predict-batch``: a manifest of DICOM and NIfTI cases (and two that fail), run as a real
subprocess, interrupted with SIGINT after its first finished case, then resumed: finished cases are not done
again, every case ends listed in results.csv (a failing case listed with its refusal code, never fatal), and the
outputs are those of ``python -m app predict``.

Budget: about 30 s on 2 CPU cores (two CLI processes, the small random model, 16-slice 64x64 phantoms).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nifti_factory import write_phantom_nifti
from service_fixtures import make_weights_dir, write_phantom_series

from app.commands.predict_batch import ManifestError, read_manifest

ROOT = Path(__file__).resolve().parents[1]


def _command(manifest: Path, out: Path, weights: Path) -> list[str]:
    return [sys.executable, "-m", "app", "predict-batch", str(manifest), "--out", str(out), "--weights-dir",
            str(weights), "--device", "cpu", "--workers", "1", "--threads", "1", "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cohort")
    weights = make_weights_dir(root / "weights")
    rows = ["case_id,path,onset_to_ct_hours"]
    for k in range(4):
        write_phantom_series(root / f"dicom{k}", n_slices=16, size=64, seed=k)
        rows.append(f"d{k},dicom{k},{k + 1}")
    write_phantom_nifti(root / "vol.nii.gz", n_slices=16, size=64, seed=7)
    rows.append("n0,vol.nii.gz,")
    (root / "notes.txt").write_text("not an image")
    rows.append("bad-input,notes.txt,")
    rows.append("gone,missing-folder,")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv", weights


def test_interrupted_run_resumes_without_redoing_finished_cases(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, weights = cohort
    out = tmp_path / "out"
    first = subprocess.Popen(_command(manifest, out, weights), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("cases/*/case.json")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 1, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["interrupted"] is True
    done_before = {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("cases/*/case.json")}
    assert 1 <= len(done_before) < 7
    with (out / "results.csv").open() as f:
        assert [r["case_id"] for r in csv.DictReader(f)] == [c for c in ["d0", "d1", "d2", "d3", "n0", "bad-input",
                                                                        "gone"] if c in done_before]

    second = subprocess.run(_command(manifest, out, weights), cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["skipped_done"] == len(done_before) and summary["listed"] == 7
    assert summary["ok"] + summary["refused"] == 7 - len(done_before) and summary["error"] == 0
    for case_id, (mtime, text) in done_before.items():  # not done again
        record = out / "cases" / case_id / "case.json"
        assert record.stat().st_mtime_ns == mtime and record.read_text() == text

    with (out / "results.csv").open() as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["d0", "d1", "d2", "d3", "n0", "bad-input", "gone"]
    for case_id in ("d0", "d1", "d2", "d3", "n0"):
        row = rows[case_id]
        assert row["status"] == "ok" and row["code"] == "", row
        assert 0.0 <= float(row["probability"] or 0) <= 1.0 and float(row["volume_ml"]) >= 0
        result = json.loads((out / "cases" / case_id / "result.json").read_text())
        assert str(result["haematoma"]["volume_ml"]) == row["volume_ml"]
        assert (out / "cases" / case_id / "mask.nii.gz").is_file()
    assert result["input"]["source_kind"] == "nifti" and "no_dicom_source" in rows["n0"]["warnings"]
    assert not (out / "cases" / "n0" / "seg.dcm").exists() and (out / "cases" / "d0" / "seg.dcm").is_file()
    assert json.loads((out / "cases" / "d2" / "result.json").read_text())["input"]["onset_to_ct_hours"] == 3.0
    assert rows["bad-input"]["status"] == "refused" and rows["bad-input"]["code"] == "not_dicom"
    assert rows["gone"]["status"] == "refused" and rows["gone"]["code"] == "input_not_found"


def test_manifest_errors_name_the_row(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("case_id,path\na,x\na,y\n")
    with pytest.raises(ManifestError, match=r"m.csv:3: case_id a appears twice"):
        read_manifest(bad)
    bad.write_text("case_id,path\n../up,x\n")
    with pytest.raises(ManifestError, match=r"m.csv:2: case_id must be"):
        read_manifest(bad)
    bad.write_text("id,file\n")
    with pytest.raises(ManifestError, match="case_id and path"):
        read_manifest(bad)
