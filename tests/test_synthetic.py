"""Synthetic head-CT cohort: determinism, DICOM/NIfTI round trips, geometry, tissue calibration, haematoma and
marker criteria, manifest, CLI. Budget: < 40 s on one core (about eight rendered cases)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from model_training.cli import main as training_main
from model_training.labels import expansion_label
from model_training.synthetic import (
    MANIFEST_COLUMNS,
    generate_case,
    write_cohort,
    write_dicom_series,
    write_nifti,
)
from model_training.synthetic.cohort import SYNTHETIC_EXTRA_COLUMNS
from model_training.synthetic.haematoma import STRUCTURE_LABELS
from model_training.synthetic.scanners import SCANNERS_BY_KEY

SEED = 11


@pytest.fixture(scope="module")
def case():
    return generate_case(SEED, 0)


def _digests(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_case_is_deterministic_and_dicom_bytes_identical(case, tmp_path):
    again = generate_case(SEED, 0)
    np.testing.assert_array_equal(case.hu, again.hu)
    np.testing.assert_array_equal(case.mask, again.mask)
    assert case.markers == again.markers and case.followup_volume_ml == again.followup_volume_ml
    a = write_dicom_series(case, tmp_path / "a")
    b = write_dicom_series(again, tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b]
    assert _digests(a) == _digests(b)


def test_case_geometry_and_acquisition_envelope(case):
    n, rows, cols = case.hu.shape
    assert (rows, cols) == (512, 512) and 26 <= n <= 34
    assert case.hu.dtype == np.int16 and case.mask.dtype == np.uint8
    dz, dy, dx = case.spacing_zyx
    assert dz == 5.0 and dy == dx and dx == pytest.approx(case.fov_mm / 512, abs=1e-6)
    lo, hi = case.scanner.fov_mm
    assert lo <= case.fov_mm <= hi
    # air outside the head, head inside the field of view
    border = np.concatenate([case.hu[:, :4, :].ravel(), case.hu[:, -4:, :].ravel(),
                             case.hu[:, :, :4].ravel(), case.hu[:, :, -4:].ravel()])
    assert np.all(border < -900)


def test_tissue_statistics_match_the_real_head_scan(case):
    hu = case.hu.astype(np.float32)
    head = hu > -300
    soft = hu[(hu >= 0) & (hu <= 80)]
    p5, p25, p50, p75, p95 = np.percentile(soft, [5, 25, 50, 75, 95])
    # real GE head scan: 9 / 24 / 33 / 43 / 63 HU (loose bounds)
    assert 2 <= p5 <= 18 and 18 <= p25 <= 30 and 27 <= p50 <= 38 and 36 <= p75 <= 50 and 48 <= p95 <= 75
    bone = (hu > 300).sum() / head.sum()
    assert 0.10 <= bone <= 0.30, bone  # real: 16.7 %
    sd = hu[(hu > 20) & (hu < 45)].std()
    assert 4.5 <= sd <= 8.0, sd  # real: ~6 HU
    # closed skull on most slices: an inner region surrounded by bone
    closed = 0
    for k in range(hu.shape[0]):
        bone_k = hu[k] > 300
        filled = ndimage.binary_fill_holes(bone_k)
        if (filled & ~bone_k).sum() * case.spacing_zyx[1] ** 2 > 2000:  # > 20 cm^2 enclosed
            closed += 1
    assert closed >= 0.7 * hu.shape[0]


def test_haematoma_volume_location_and_density(case):
    assert case.baseline_volume_ml == pytest.approx(case.mask.sum() * case.voxel_volume_ml, abs=1e-3)
    assert 0.5 <= case.baseline_volume_ml <= 110
    zz, yy, xx = np.nonzero(case.mask)
    dz, dy, dx = case.spacing_zyx
    ox, oy, oz = case.origin_xyz
    cx, cy, cz = case.brain_centroid_lps
    assert np.all(np.abs(ox + xx * dx - cx) < 56) and np.all(np.abs(oy + yy * dy - cy) < 56)
    assert np.all(np.abs(oz + zz * dz - cz) < 80)
    core = ndimage.binary_erosion(case.mask, structure=np.ones((1, 3, 3)), iterations=2)
    assert 20 <= np.median(case.hu[core & (case.structure_labels == 1)]) <= 95
    assert case.label == int(expansion_label(case.baseline_volume_ml, case.followup_volume_ml))


def test_volume_override_changes_only_the_haematoma():
    # without mimics: a dense calcification beside the clot takes a wider partial-volume halo than the test allows
    case = generate_case(SEED, 0, mimics=False)
    a = generate_case(SEED, 0, haematoma_volume_ml=30.0, mimics=False)
    assert a.baseline_volume_ml == pytest.approx(30.0, rel=0.1)
    assert (a.scanner, a.fov_mm, a.hu.shape, a.admission_date, a.markers) == (
        case.scanner, case.fov_mm, case.hu.shape, case.admission_date, case.markers)
    # anatomy and noise come from their own streams: identical away from the blood
    untouched = (a.structure_labels == 0) & (case.structure_labels == 0)
    untouched = ~ndimage.binary_dilation(~untouched, structure=np.ones((3, 7, 7)), iterations=2)  # PV halo
    np.testing.assert_array_equal(a.hu[untouched], case.hu[untouched])
    assert not np.array_equal(a.mask, case.mask)
    with pytest.raises(TypeError):
        generate_case(SEED, 0, colour="red")


def _largest_slice(region: np.ndarray) -> int:
    """The axial slice with the largest area of ``region`` (where a reader assesses a marker)."""
    return int(np.argmax(region.sum(axis=(1, 2))))


def _core(region2d: np.ndarray, iterations: int = 2) -> np.ndarray:
    return ndimage.binary_erosion(region2d, structure=np.ones((3, 3)), iterations=iterations)


def test_black_hole_criteria():
    c = generate_case(SEED, 4, markers={"black_hole": 1}, haematoma_volume_ml=40.0, n_slices=26)
    assert c.markers["hypodensity"] == 1 and c.hu.shape == (26, 512, 512)
    region = c.structure_labels == STRUCTURE_LABELS["hypodense_focus"]
    k = _largest_slice(region)
    hu, labels = c.hu[k].astype(np.float32), c.structure_labels[k]
    core = _core(region[k])
    ring = ndimage.binary_dilation(region[k], iterations=5) & ~ndimage.binary_dilation(region[k], iterations=2)
    ring &= labels == STRUCTURE_LABELS["haematoma"]
    assert core.sum() >= 10 and ring.sum() >= 10
    assert hu[ring].mean() - hu[core].mean() > 28
    # encapsulated: no connection with the surface outside the haematoma, on any slice
    grown = ndimage.binary_dilation(region, structure=np.ones((1, 3, 3)), iterations=2)
    assert np.all(c.mask[grown] == 1)


def test_blend_sign_criteria():
    c = generate_case(SEED, 5, markers={"blend": 1}, haematoma_volume_ml=35.0, n_slices=26, scanner="ge_optima_ct540")
    assert c.scanner is SCANNERS_BY_KEY["ge_optima_ct540"] and c.fov_mm == 250.0
    region = c.structure_labels == STRUCTURE_LABELS["blend_hypo"]
    k = _largest_slice(region)
    hu, labels = c.hu[k].astype(np.float32), c.structure_labels[k]
    hypo, hyper = _core(region[k]), _core(labels == STRUCTURE_LABELS["haematoma"])
    assert hypo.sum() >= 10 and hyper.sum() >= 10
    assert hu[hyper].mean() - hu[hypo].mean() > 18
    # adjacent: the hypodense part touches the hyperdense part
    assert np.any(ndimage.binary_dilation(region[k]) & (labels == STRUCTURE_LABELS["haematoma"]))


def test_fluid_level_is_a_straight_horizontal_line():
    c = generate_case(SEED, 6, markers={"fluid_level": 1}, haematoma_volume_ml=35.0, n_slices=26)
    upper = c.structure_labels == STRUCTURE_LABELS["fluid_hypo"]
    lower = c.structure_labels == STRUCTURE_LABELS["haematoma"]
    assert upper.sum() > 20 and lower.sum() > 20
    # anterior (non-dependent, smaller row index) part above one straight coronal line, on every slice
    assert np.nonzero(upper)[1].max() < np.nonzero(lower)[1].min() + 1
    k = _largest_slice(upper)
    hu = c.hu[k].astype(np.float32)
    core_up, core_low = _core(upper[k]), _core(lower[k])
    assert hu[core_up].mean() < 28 < hu[core_low].mean()  # hypodense to brain above, hyperdense below


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])
def test_dicom_round_trip_pydicom_and_simpleitk(case, tmp_path, ts):
    paths = write_dicom_series(case, tmp_path / "dcm", transfer_syntax=ts if ts != "1.2.840.10008.1.2.4.90" else ts)
    assert len(paths) == case.hu.shape[0]
    first = pydicom.dcmread(paths[0])
    assert first.file_meta.TransferSyntaxUID == ts
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.PatientName == "SYNTHETIC^CASE0001" and first.PatientID == "SYN0001"
    assert first.PatientBirthDate == "" and (first.WindowCenter, first.WindowWidth) == (35, 90)
    assert first.Manufacturer == case.scanner.manufacturer
    assert (first.RescaleIntercept, first.RescaleSlope, first.PixelRepresentation) == (-1024, 1, 1)
    uids = {(d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID) for d in map(pydicom.dcmread, paths)}
    assert len(uids) == 1
    k = case.hu.shape[0] // 2
    ds = pydicom.dcmread(paths[k])
    np.testing.assert_array_equal(ds.pixel_array.astype(np.int32) - 1024, case.hu[k])
    assert float(ds.ImagePositionPatient[2]) == pytest.approx(case.origin_xyz[2] + k * 5.0, abs=1e-3)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm")))
    img = reader.Execute()
    assert img.GetSize() == case.hu.shape[::-1]
    np.testing.assert_allclose(img.GetSpacing(), case.spacing_zyx[::-1], atol=1e-4)
    np.testing.assert_allclose(img.GetOrigin(), case.origin_xyz, atol=1e-3)
    np.testing.assert_allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).astype(np.int16), case.hu)


def test_nifti_image_and_mask_share_geometry(case, tmp_path):
    image_path, mask_path = write_nifti(case, tmp_path)
    img, msk = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
    for im in (img, msk):
        np.testing.assert_allclose(im.GetOrigin(), case.origin_xyz, atol=1e-3)
        np.testing.assert_allclose(im.GetSpacing(), case.spacing_zyx[::-1], atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), case.hu)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(msk), case.mask)


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_cli_cohort_manifest_and_independence_of_n(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert training_main(["synth", "--n", "2", "--out", str(out), "--seed", str(SEED + 100)]) == 0
    assert "wrote 2 cases" in capsys.readouterr().out
    columns, rows = _read_manifest(out / "manifest.csv")
    assert columns == [*MANIFEST_COLUMNS, *SYNTHETIC_EXTRA_COLUMNS]
    assert len(rows) == 2
    for row in rows:
        assert (out / row["image"]).is_dir() and (out / row["image_nifti"]).is_file()
        mask = sitk.ReadImage(str(out / row["mask"]))
        voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
        assert float(row["baseline_volume_ml"]) == pytest.approx(sitk.GetArrayFromImage(mask).sum() * voxel_ml, abs=1e-3)
        if row["label"] == "":  # a head without haemorrhage: empty mask, no follow-up, no risk
            assert float(row["baseline_volume_ml"]) == 0.0 and row["followup_volume_ml"] == row["risk_true"] == ""
        else:
            assert int(row["label"]) == expansion_label(float(row["baseline_volume_ml"]),
                                                        float(row["followup_volume_ml"]))
            assert 0.0 < float(row["risk_true"]) < 1.0 and 0.0 < float(row["risk_image"]) < 1.0
        assert "2012-02-01" <= row["admission_date"] <= "2019-10-31"
        assert 0.5 <= float(row["onset_to_ct_hours"]) <= 8.0
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert summary["n_cases"] == 2 and set(summary["markers"]) >= {"hypodensity", "ivh"}

    # case k does not depend on N
    single = write_cohort(1, tmp_path / "single", SEED + 100, formats=("dicom",))
    _, rows1 = _read_manifest(single)
    assert rows1[0]["image"] == "cases/SYN0001/dicom" and rows1[0]["image_nifti"] == ""
    for key in MANIFEST_COLUMNS:
        assert rows1[0][key] == rows[0][key]
    a = sorted((single.parent / rows1[0]["image"]).iterdir())
    b = sorted((out / rows[0]["image"]).iterdir())
    assert _digests(a) == _digests(b)


def test_swirl_is_a_brain_density_region_within_the_clot():
    c = generate_case(SEED, 7, markers={"swirl": 1, "hypodensity": 0}, haematoma_volume_ml=35.0, n_slices=26)
    region = c.structure_labels == STRUCTURE_LABELS["swirl"]
    k = _largest_slice(region)
    hu, labels = c.hu[k].astype(np.float32), c.structure_labels[k]
    core = _core(region[k])
    ring = ndimage.binary_dilation(region[k], iterations=5) & ~ndimage.binary_dilation(region[k], iterations=2)
    ring_clot = ring & (labels == STRUCTURE_LABELS["haematoma"])
    assert core.sum() >= 10 and 28 <= hu[core].mean() <= 45  # iso-attenuating to brain
    assert hu[ring_clot].mean() - hu[core].mean() > 12
    # surrounded by clot on most sides, yet (without a hypodensity) reaching the margin: not encapsulated
    shell = ndimage.binary_dilation(region, structure=np.ones((1, 3, 3)), iterations=2) & ~region
    in_clot = float(c.mask[shell].mean())
    assert 0.6 <= in_clot < 1.0


def test_a_large_haematoma_stays_in_its_hemisphere():
    from model_training.synthetic.geometry import Grid, head_frame

    c = generate_case(SEED, 8, markers={"irregular_shape": 1}, haematoma_volume_ml=80.0, n_slices=26)
    grid = Grid(shape=c.mask.shape, spacing_zyx=c.spacing_zyx, origin_xyz=c.origin_xyz)
    whole = tuple(slice(0, n) for n in c.mask.shape)
    u = head_frame(grid, whole, np.asarray(c.head.centre), c.head.rotation)[0]
    side = np.sign(u[c.mask > 0])
    assert c.baseline_volume_ml > 50 and abs(float(side.mean())) == 1.0  # no voxel across the midline


def test_noise_range_changes_only_the_noise(tmp_path):
    base = generate_case(SEED, 0, mimics=False)
    assert 4.0 <= base.noise_sd_hu <= 5.0  # the generator's default range
    wide = generate_case(SEED, 0, mimics=False, noise_sd_range_hu=(1.8, 9.0))
    assert 1.8 <= wide.noise_sd_hu <= 9.0 and wide.noise_sd_hu != base.noise_sd_hu
    np.testing.assert_array_equal(wide.mask, base.mask)
    np.testing.assert_array_equal(wide.structure_labels, base.structure_labels)
    assert (wide.markers, wide.baseline_volume_ml, wide.followup_volume_ml) == (
        base.markers, base.baseline_volume_ml, base.followup_volume_ml)
    brain = (base.hu > 20) & (base.hu < 40)
    ratio = np.std((wide.hu - base.hu)[brain].astype(np.float64))
    expected = np.sqrt(abs(wide.noise_sd_hu ** 2 - base.noise_sd_hu ** 2))
    assert ratio > 0.3 * expected  # the images differ by noise of the two levels
    out = tmp_path / "wide"
    assert training_main(["synth", "--n", "1", "--out", str(out), "--seed", str(SEED), "--formats", "nifti",
                          "--noise-sd-hu", "1.8", "9.0"]) == 0
    _, rows = _read_manifest(out / "manifest.csv")
    assert 1.8 <= float(rows[0]["noise_sd_hu"]) <= 9.0
    with pytest.raises(ValueError, match="noise_sd_range_hu"):
        write_cohort(1, tmp_path / "bad", SEED, formats=("nifti",), noise_sd_range_hu=(9.0, 2.0))
