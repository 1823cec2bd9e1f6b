"""Real heads without haemorrhage through the client paths: the default weights must answer "no haematoma".

The GE head (../shared/data/dcm_qa_ct/In/GE, a real DICOM patient scan with gantry tilt) through
``python -m app predict`` as a user runs it; the normal head (../shared/data/normal_heads, HU NIfTI) through the
in-process predictor that the service uses. Not detected, volume < 1 mL, no expansion probability.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, require_shared


@pytest.fixture(scope="module")
def default_predictor():
    from app.inference import Predictor

    return Predictor.from_registry(PROJECT_ROOT / "weights", None, "cpu")


def _assert_no_haematoma(body: dict) -> None:
    haem, exp = body["haematoma"], body["expansion"]
    assert haem["detected"] is False, body
    assert haem["volume_ml"] < 1.0
    assert exp["probability"] is None and exp["predicted"] is None
    assert exp["reason"] == "no_haematoma_detected"


@pytest.mark.slow
def test_ge_head_through_the_cli_reports_no_haematoma(shared_data, tmp_path):
    ge = require_shared(shared_data / "dcm_qa_ct" / "In" / "GE")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "app", "predict", str(ge), "--out", str(out), "--device", "cpu"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["detected"] is False and summary["probability"] is None and summary["volume_ml"] < 1.0
    _assert_no_haematoma(json.loads((out / "result.json").read_text()))


def test_normal_head_nifti_reports_no_haematoma(default_predictor, normal_head_nifti):
    from app.ingestion import load_series

    result = default_predictor.predict(load_series([str(normal_head_nifti)]))
    assert result.detected is False
    assert result.volume_ml < 1.0 and result.voxel_count == 0
    assert result.probability is None and result.predicted is None
    assert result.reason == "no_haematoma_detected"
