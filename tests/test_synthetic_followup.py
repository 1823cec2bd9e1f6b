"""The follow-up scan of a synthetic case (model_training/synthetic/followup.py) and ``synth --followup``:

* the same head and haematoma draws as the baseline, moved rigidly within the documented limits, acquired 20-24 h
  later, its mask at the manifest's follow-up volume (within 0.5 %), the baseline itself unchanged;
* a two-case cohort written with follow-ups: manifest columns, DICOM identity (same patient, new UIDs, later
  acquisition) and geometry (the follow-up DICOM and NIfTI mask agree), read back by the manifest reader.

Budget: about 20-25 s on 2 CPU cores (three phantoms of 20 slices, one two-case cohort).
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from model_training.cohort.manifest import mask_volume_ml, read_manifest
from model_training.synthetic import generate_case, write_cohort
from model_training.synthetic.followup import ROTATION_DEG, TRANSLATION_MM, generate_followup

SEED = 8101  # a seed of these tests only


@pytest.fixture(scope="module")
def pair():
    base = generate_case(SEED, 0, haematoma_volume_ml=12.0, n_slices=20, markers={"hypodensity": 1})
    return base, generate_followup(SEED, 0, base)


def test_followup_is_the_same_head_moved_with_the_followup_volume(pair) -> None:
    base, fu = pair
    assert fu.scan == "followup" and base.scan == "baseline" and base.hours_after_baseline == 0.0
    # same draws: markers, location, side, scanner, clinical variables, volumes and label
    for name in ("markers", "location", "side", "scanner", "fov_mm", "onset_to_ct_hours", "admission_date",
                 "baseline_volume_ml", "followup_volume_ml", "label", "case_id", "mimics"):
        assert getattr(fu, name) == getattr(base, name), name
    assert fu.hu.shape == base.hu.shape and fu.spacing_zyx == base.spacing_zyx
    # the mask reaches the growth model's follow-up volume
    assert fu.mask_volume_ml == pytest.approx(base.followup_volume_ml, rel=0.005, abs=0.003)
    assert base.mask_volume_ml == pytest.approx(base.baseline_volume_ml, abs=1e-3)
    # a new position: rigid motion within the limits, not none at all
    shift = np.subtract(fu.head.centre, base.head.centre)
    assert np.all(np.abs(shift) <= np.asarray(TRANSLATION_MM) + 1e-9) and np.linalg.norm(shift) > 0.1
    turn = np.subtract([fu.head.yaw_deg, fu.head.pitch_deg, fu.head.roll_deg],
                       [base.head.yaw_deg, base.head.pitch_deg, base.head.roll_deg])
    assert np.all(np.abs(turn) <= np.asarray(ROTATION_DEG) + 1e-9) and np.abs(turn).max() > 0.05
    # anatomy unchanged apart from the pose (size and densities)
    assert (fu.head.semi_lr, fu.head.hu_wm, fu.head.hu_cortical) == (base.head.semi_lr, base.head.hu_wm,
                                                                      base.head.hu_cortical)
    # the haematoma moved with the head: its centre relative to the head centre keeps its length (rigid motion)
    rel_base = np.subtract(base.haematoma_centre_lps, base.head.centre)
    rel_fu = np.subtract(fu.haematoma_centre_lps, fu.head.centre)
    assert np.linalg.norm(rel_fu) == pytest.approx(np.linalg.norm(rel_base), abs=4.0)
    # acquired 20-24 h later; new noise (a new acquisition)
    hours = (fu.acquired_at - base.acquired_at).total_seconds() / 3600
    assert 20.0 <= hours <= 24.0
    assert not np.array_equal(fu.hu, base.hu)


def test_followup_leaves_the_baseline_and_is_deterministic(pair) -> None:
    base, fu = pair
    again = generate_case(SEED, 0, haematoma_volume_ml=12.0, n_slices=20, markers={"hypodensity": 1})
    assert np.array_equal(again.hu, base.hu) and np.array_equal(again.mask, base.mask)
    fu2 = generate_followup(SEED, 0, haematoma_volume_ml=12.0, n_slices=20, markers={"hypodensity": 1})
    assert np.array_equal(fu2.hu, fu.hu) and np.array_equal(fu2.mask, fu.mask)
    with pytest.raises(ValueError, match="baseline"):
        generate_followup(SEED, 1, base)


@pytest.fixture(scope="session")
def followup_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two cases with haematomas, DICOM + NIfTI, with follow-up scans (shared with the label-followup test)."""
    out = tmp_path_factory.mktemp("followup_cohort")
    return write_cohort(2, out, seed=SEED, formats=("dicom", "nifti"), ich_free_fraction=0.0, followup=True)


def _first(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)


def test_synth_followup_cohort_manifest_dicom_and_nifti(followup_cohort: Path) -> None:
    root = followup_cohort.parent
    rows = list(csv.DictReader(followup_cohort.open()))
    assert len(rows) == 2 and "followup_image" in rows[0] and "followup_mask" in rows[0]
    manifest = read_manifest(followup_cohort)
    for row, rec in zip(rows, manifest.cases, strict=True):
        assert row["followup_image"].endswith("followup/dicom") and row["followup_mask"].endswith("followup/mask.nii.gz")
        assert rec.followup_image == (root / row["followup_image"]).resolve() and rec.followup_mask is not None
        assert mask_volume_ml(rec.followup_mask) == pytest.approx(float(row["followup_volume_ml"]), rel=0.005,
                                                                    abs=0.003)
        b, f = _first(root / row["image"]), _first(root / row["followup_image"])
        assert (f.PatientID, str(f.PatientName)) == (b.PatientID, str(b.PatientName))
        assert f.StudyInstanceUID != b.StudyInstanceUID and f.SeriesInstanceUID != b.SeriesInstanceUID
        assert f.SOPInstanceUID != b.SOPInstanceUID

        def when(ds: pydicom.Dataset) -> dt.datetime:
            return dt.datetime.strptime(ds.AcquisitionDate + ds.AcquisitionTime[:6], "%Y%m%d%H%M%S")

        assert 20 * 3600 - 1 <= (when(f) - when(b)).total_seconds() <= 24 * 3600
        # the follow-up NIfTI image and mask share the follow-up DICOM geometry
        nifti = sitk.ReadImage(str(root / Path(row["followup_image"]).parent / "image.nii.gz"))
        mask = sitk.ReadImage(str(rec.followup_mask))
        assert nifti.GetSize() == mask.GetSize() and np.allclose(nifti.GetOrigin(), mask.GetOrigin())
        assert np.allclose(nifti.GetOrigin()[:2], [float(v) for v in f.ImagePositionPatient[:2]], atol=1e-3)


def test_label_followup_fills_labels_through_the_serving_path(followup_cohort: Path, tmp_path: Path) -> None:
    """label-followup on the two-case cohort with the small seeded model: one row's label blanked (filled from the
    scans), the other kept; the written manifest reads back, paths rebased to its own folder."""
    from service_fixtures import make_weights_dir

    from app.comparison import expanded
    from model_training.cli import main

    rows = list(csv.DictReader(followup_cohort.open()))
    truth = rows[0]["label"]
    rows[0]["label"] = ""
    blanked = followup_cohort.parent / "manifest_blank.csv"
    with blanked.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    weights = make_weights_dir(tmp_path / "weights", seed=5)
    out = tmp_path / "labelled" / "manifest.csv"
    assert main(["label-followup", str(blanked), "--out", str(out), "--weights-dir", str(weights),
                 "--device", "cpu"]) == 0
    got = list(csv.DictReader(out.open()))
    assert [r["case_id"] for r in got] == [r["case_id"] for r in rows]
    for r in got:
        assert r["predicted_baseline_volume_ml"] != "" and r["predicted_followup_volume_ml"] != ""
        b, f = float(r["predicted_baseline_volume_ml"]), float(r["predicted_followup_volume_ml"])
        if r["followup_label"] != "":
            assert int(r["followup_label"]) == int(expanded(b, f))
        else:
            assert b == 0.0  # nothing detected on the baseline: no label from the scans
    first, second = got
    if first["followup_label"] != "":
        assert first["label_source"] == "followup_scan" and first["label"] == first["followup_label"]
    else:
        assert first["label_source"] == "none:no_baseline_haematoma" and first["label"] == ""
    assert second["label_source"] == "manifest" and second["label"] == rows[1]["label"]
    assert truth in ("0", "1")
    back = read_manifest(out)
    assert back.cases[1].followup_image is not None and back.cases[1].followup_image.is_dir()
