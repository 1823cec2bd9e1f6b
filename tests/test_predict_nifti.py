"""Predictions from NIfTI volumes: ``python -m app predict`` on a synthetic case written as NIfTI by
model_training.synthetic, the inference core on the real normal head CT (../shared/data/normal_heads), and
``brain_not_found`` for a NIfTI exactly as for DICOM. The small seeded model of tests/service_fixtures.py serves
(numbers are checked for consistency, not accuracy). Budget: about 30 s on 2 CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nifti_factory import phantom_geometry, write_volume
from service_fixtures import make_weights_dir, phantom_volume, random_weights

from app.api.service import compact_outputs
from app.errors import IngestionError, RefusalCode
from app.inference import Predictor
from app.ingestion import load_series

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("nifti-predict") / "weights")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(random_weights(), "cpu")


def test_predict_cli_on_a_synthetic_nifti_case(weights_dir: Path, tmp_path: Path) -> None:
    from model_training.synthetic import generate_case, write_nifti

    case = generate_case(7, 2, n_slices=20, haematoma_volume_ml=20.0)
    image_path, _ = write_nifti(case, tmp_path / "case")
    assert image_path is not None
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "app", "predict", str(image_path), "--out", str(out),
                           "--weights-dir", str(weights_dir), "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "overlay.png", "result.json"]
    assert "seg.dcm not written:" in proc.stderr and "NIfTI" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary["not_written"]) == {"seg.dcm", "sr.dcm", "summary.dcm"}
    body = json.loads((out / "result.json").read_text())
    assert body["files"] == ["mask.nii.gz", "overlay.png", "result.json"]
    assert body["files_not_written"]["seg.dcm"]["code"] == "seg_needs_dicom_source"
    assert body["files_not_written"]["sr.dcm"]["code"] == "needs_dicom_source"
    assert body["input"]["source_kind"] == "nifti" and body["input"]["slice_count"] == 20
    assert body["input"]["series_instance_uid"] == "" and "no_dicom_source" in [
        w["code"] for w in body["input"]["warnings"]]
    assert body["input"]["spacing_mm"] == pytest.approx(list(case.spacing_zyx), abs=1e-5)
    assert image_path.name not in proc.stdout + proc.stderr + json.dumps(body)  # the file name is never echoed
    mask = sitk.ReadImage(str(out / "mask.nii.gz"))
    source = sitk.ReadImage(str(image_path))
    assert mask.GetSize() == source.GetSize()  # the mask lines up voxel for voxel with the input file
    np.testing.assert_allclose(mask.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), source.GetDirection(), atol=1e-6)
    assert int(sitk.GetArrayViewFromImage(mask).sum()) == body["haematoma"]["voxel_count"]
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_normal_head_through_the_predictor(normal_head_nifti: Path, predictor: Predictor) -> None:
    """The real head is skull-stripped (brain found) and the mask comes back on the file's own grid."""
    series = load_series([normal_head_nifti])
    result = predictor.predict(series)
    assert result.mask.GetSize() == series.image.GetSize() == (190, 240, 95)
    assert result.source_slice_masks.shape[0] == 0  # no source instances to map onto
    compact = compact_outputs(predictor, series, result)
    assert compact.available_files == ("mask.nii.gz", "overlay.png")
    missing = compact.unavailable("seg.dcm")
    assert missing is not None and missing.code == "seg_needs_dicom_source"
    with pytest.raises(KeyError):
        compact.render("seg.dcm")
    assert set(compact.render_all()) == {"mask.nii.gz", "overlay.png"}


def test_slice_order_of_the_file_does_not_matter(tmp_path: Path, predictor: Predictor) -> None:
    """The same phantom stored inferior-to-superior and (a left-handed grid) superior-to-inferior gives the same
    prediction, and each mask comes back in its own file's slice order."""
    hu, _, _, dz = phantom_volume(16, 96)
    spacing, origin = phantom_geometry(16, 96)
    up = load_series([write_volume(tmp_path / "up.nii.gz", hu, spacing, origin)])
    top = (origin[0], origin[1], origin[2] + 15 * dz)
    down = load_series([write_volume(tmp_path / "down.nii.gz", hu[::-1].copy(), spacing, top,
                                     direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))])
    a, b = predictor.predict(up), predictor.predict(down)
    assert a.raw_probability == pytest.approx(b.raw_probability, abs=1e-4)
    assert a.segmented_volume_ml == pytest.approx(b.segmented_volume_ml, rel=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a.mask), sitk.GetArrayViewFromImage(b.mask)[::-1])


def test_brain_not_found_as_for_dicom(tmp_path: Path, predictor: Predictor) -> None:
    """A water cylinder in air is valid HU (ingestion accepts it) but holds no skull and brain."""
    _, y, x = np.mgrid[:12, :64, :64]
    hu = np.where((y - 32) ** 2 + (x - 32) ** 2 < 24**2, 0, -1000).astype(np.int16)
    series = load_series([write_volume(tmp_path / "water.nii.gz", hu, (2.5, 2.5, 5.0))])
    with pytest.raises(IngestionError) as info:
        predictor.prepare(series)
    assert info.value.code is RefusalCode.BRAIN_NOT_FOUND
