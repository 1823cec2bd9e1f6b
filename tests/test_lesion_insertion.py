"""Synthetic haematomas inserted into a real head CT (model_training/synthetic/insertion.py and its cohort writer),
on the real normal head of ../shared/data/normal_heads (fails instead of skipping under CI=true when absent)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import require_shared
from scipy import ndimage

from model_training.cohort.manifest import read_manifest
from model_training.synthetic.insertion import axis_aligned, insert_haematoma, load_head
from model_training.synthetic.insertion_cohort import write_insertion_cohort

PLAIN = {"hypodensity": 0, "black_hole": 0, "swirl": 0, "blend": 0, "fluid_level": 0, "irregular_shape": 0,
         "heterogeneous_density": 0, "ivh": 0}


@pytest.fixture(scope="module")
def head(normal_head_nifti: Path):
    return load_head(normal_head_nifti, np.random.default_rng(7))


def test_real_head_is_prepared_as_anatomy(head) -> None:
    voxel_ml = float(np.prod(head.grid.spacing_zyx)) / 1000.0
    assert 900 < head.phantom.parenchyma.sum() * voxel_ml < 1800  # an adult brain's parenchyma, mL
    assert 3 < head.phantom.ventricles.sum() * voxel_ml < 120  # deep CSF only, not the sulci
    assert 2.0 < head.noise_sd_hu < 15.0
    assert np.allclose(head.image.GetDirection(), np.eye(3).ravel())


def test_inserted_clot_has_the_requested_volume_density_and_noise(head) -> None:
    hu, result = insert_haematoma(head, np.random.default_rng(1), np.random.default_rng(2), 20.0, PLAIN,
                                  location="basal_ganglia")
    mask = result.mask.astype(bool)
    voxel_ml = float(np.prod(head.grid.spacing_zyx)) / 1000.0
    assert mask.sum() * voxel_ml == pytest.approx(20.0, rel=0.15)
    core = ndimage.binary_erosion(mask, iterations=2)
    assert abs(float(np.mean(hu[core])) - result.density_hu) < 3.0
    residual = hu[core] - result.density_hu
    assert 0.5 * head.noise_sd_hu < float(np.std(residual)) < 2.0 * head.noise_sd_hu
    far = ~ndimage.binary_dilation(mask | (result.labels > 0), iterations=6)
    original = np.clip(np.rint(head.phantom.hu), -1024, 3071)
    assert np.array_equal(hu[far], original[far].astype(np.int16))  # the real head is untouched away from it
    again, _ = insert_haematoma(head, np.random.default_rng(1), np.random.default_rng(2), 20.0, PLAIN,
                                location="basal_ganglia")
    assert np.array_equal(hu, again)


def test_intraventricular_blood_lies_in_the_real_ventricles(head) -> None:
    _, result = insert_haematoma(head, np.random.default_rng(3), np.random.default_rng(4), 15.0,
                                 PLAIN | {"ivh": 1})
    ivh = result.labels == 7
    assert ivh.sum() > 100
    assert float(head.phantom.ventricles[ivh].mean()) > 0.5


def test_oblique_image_is_aligned_without_moving_the_anatomy() -> None:
    img = sitk.GetImageFromArray(np.zeros((20, 40, 40), dtype=np.float32))
    img.SetSpacing((1.0, 1.0, 2.0))
    t = np.deg2rad(15.0)
    img.SetDirection((1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t), 0.0, np.sin(t), np.cos(t)))
    arr = sitk.GetArrayFromImage(img)
    arr[10, 20, 20] = 1000.0
    src = sitk.GetImageFromArray(arr)
    src.CopyInformation(img)
    out = axis_aligned(src)
    assert np.allclose(out.GetDirection(), np.eye(3).ravel())
    point = src.TransformIndexToPhysicalPoint((20, 20, 10))
    idx = out.TransformPhysicalPointToIndex(point)
    assert sitk.GetArrayViewFromImage(out)[idx[2], idx[1], idx[0]] > 300.0


def test_cohort_writer_gives_a_readable_manifest_with_the_unmodified_head(normal_head_nifti: Path,
                                                                          tmp_path: Path) -> None:
    manifest = write_insertion_cohort([normal_head_nifti], 2, tmp_path / "ins", seed=5)
    cases = read_manifest(manifest).cases
    assert [c.case_id for c in cases] == ["FREE001", "INS0001", "INS0002"]
    assert cases[0].label is None and cases[0].baseline_volume_ml == 0
    for case in cases[1:]:
        assert case.label in (0, 1) and case.baseline_volume_ml > 0
    rows = list(csv.DictReader(manifest.open()))
    assert not any(str(normal_head_nifti.name) in v for row in rows for v in row.values())  # no source names
    again = write_insertion_cohort([normal_head_nifti], 1, tmp_path / "again", seed=5)
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ins" / rows[1]["image"])))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(again.parent / rows[1]["image"])))
    assert np.array_equal(a, b)  # case k is the same whatever n


def test_default_weights_find_a_clot_inserted_into_the_real_head(head, tmp_path: Path) -> None:
    """The serving path on real anatomy: a plain 25 mL basal-ganglia clot in the real normal head is detected and
    segmented (the same head without it reports none: tests/test_predict_nifti.py)."""
    from app import ingestion
    from app.inference import Predictor
    from model_training.synthetic.insertion import head_image

    hu, result = insert_haematoma(head, np.random.default_rng(11), np.random.default_rng(12), 25.0, PLAIN,
                                  location="basal_ganglia")
    path = tmp_path / "inserted.nii.gz"
    sitk.WriteImage(head_image(head, hu), str(path))
    predictor = Predictor.from_registry(Path(__file__).resolve().parents[1] / "weights", device="cpu")
    out = predictor.predict(ingestion.load_series([path]))
    pred = sitk.GetArrayViewFromImage(out.mask) > 0
    truth = result.mask > 0
    assert out.detected
    assert 2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum()) > 0.7


def test_default_weights_report_no_haematoma_on_the_realigned_ge_head(shared_data: Path, tmp_path: Path) -> None:
    """The real GE head of ../shared/data (gantry tilt corrected by ingestion), resampled once more onto an
    axis-aligned grid as the insertion does: no haematoma (the same head as sent: tests/test_real_heads_no_bleed.py)."""
    from app import ingestion
    from app.inference import Predictor

    ge = require_shared(shared_data / "dcm_qa_ct" / "In" / "GE")
    aligned = axis_aligned(ingestion.load_series([ge]).image)
    path = tmp_path / "ge_aligned.nii.gz"
    sitk.WriteImage(sitk.Cast(aligned, sitk.sitkInt16), str(path))
    predictor = Predictor.from_registry(Path(__file__).resolve().parents[1] / "weights", device="cpu")
    out = predictor.predict(ingestion.load_series([path]))
    assert not out.detected and out.volume_ml == 0.0 and out.probability is None
