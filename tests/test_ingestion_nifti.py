"""NIfTI ingestion (app/ingestion/volume_file.py) on real files written with SimpleITK, and the real normal head
CT in ../shared/data/normal_heads (a NIfTI file; fails instead of skipping under CI=true when absent)."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nifti_factory import (
    patch_header,
    phantom_geometry,
    write_four_d,
    write_not_hu,
    write_phantom_nifti,
    write_truncated,
    write_volume,
)
from service_fixtures import phantom_volume, write_phantom_series

from app.cli import main
from app.errors import IngestionError, RefusalCode, WarningCode
from app.ingestion import ArchiveLimits, inspect_inputs, load_series
from app.ingestion.volume_file import is_nifti


def refusal(inputs: list, **kwargs: object) -> IngestionError:
    with pytest.raises(IngestionError) as info:
        load_series(inputs, **kwargs)
    return info.value


@pytest.mark.parametrize("name", ["phantom.nii", "phantom.nii.gz"])
def test_phantom_nifti_equals_the_dicom_series(tmp_path: Path, name: str) -> None:
    """Same phantom as NIfTI and as DICOM: same voxels, same LPS geometry; the NIfTI has no source instances."""
    nifti = load_series([write_phantom_nifti(tmp_path / name, n_slices=12, size=64)])
    write_phantom_series(tmp_path / "dcm", n_slices=12, size=64)
    dicom = load_series([tmp_path / "dcm"])
    assert nifti.source_kind == "nifti" and dicom.source_kind == "dicom"
    assert nifti.slices == [] and nifti.source_headers == [] and not nifti.has_source_instances
    assert nifti.study_instance_uid == nifti.series_instance_uid == "" and nifti.frame_of_reference_uid is None
    assert nifti.slice_count == 12 == dicom.slice_count and not nifti.resampled
    assert nifti.image.GetPixelID() == sitk.sitkFloat32
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(nifti.image, get)(), getattr(dicom.image, get)(), atol=1e-4)
    np.testing.assert_array_equal(nifti.hu_array, dicom.hu_array)
    assert [w.code for w in nifti.warnings] == [WarningCode.NO_DICOM_SOURCE]


def test_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    path = write_phantom_nifti(tmp_path / "a.nii.gz", n_slices=6, size=32)
    disguised = tmp_path / "IM0001.dcm"
    disguised.write_bytes(path.read_bytes())
    assert load_series([disguised]).source_kind == "nifti"
    assert load_series([path.read_bytes()]).source_kind == "nifti"  # raw bytes, as uploaded
    raw = gzip.decompress(path.read_bytes())
    assert is_nifti(raw) and is_nifti(path.read_bytes()) and not is_nifti(gzip.compress(b"x" * 400))
    junk = tmp_path / "junk.nii"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    err = refusal([junk])
    assert err.code is RefusalCode.NOT_DICOM and "NIfTI" in err.message


def test_ras_stored_volume_keeps_its_grid(tmp_path: Path) -> None:
    """A volume whose first two axes run towards the patient's right and anterior (as NIfTI tools often store
    them) keeps its own grid: the LPS direction says so and no voxel is reordered."""
    hu, _, px, dz = phantom_volume(8, 48)
    path = write_volume(tmp_path / "ras.nii.gz", hu, (px, px, dz), (50.0, 60.0, -20.0),
                        direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    series = load_series([path])
    assert series.image.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert series.image.GetOrigin() == pytest.approx((50.0, 60.0, -20.0), abs=1e-4)
    np.testing.assert_array_equal(series.hu_array, hu)


def test_zip_and_sidecar_files(tmp_path: Path) -> None:
    """A NIfTI inside a ZIP is read; a JSON sidecar (dcm2niix writes one) is skipped and counted."""
    path = write_phantom_nifti(tmp_path / "ct.nii.gz", n_slices=6, size=32)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("case/ct.nii.gz", path.read_bytes())
        zf.writestr("case/ct.json", json.dumps({"Modality": "CT"}))
    series = load_series([buffer.getvalue()])
    assert series.source_kind == "nifti"
    skipped = [w for w in series.warnings if w.code is WarningCode.SKIPPED_OBJECTS]
    assert skipped and skipped[0].details == {"counts": {"not_an_image": 1}}


def test_two_volumes_or_nifti_with_dicom_are_refused(tmp_path: Path) -> None:
    a = write_phantom_nifti(tmp_path / "a.nii.gz", n_slices=6, size=32)
    b = write_phantom_nifti(tmp_path / "b.nii", n_slices=6, size=32)
    err = refusal([a, b])
    assert err.code is RefusalCode.MULTIPLE_VOLUMES and err.details == {"n_nifti": 2, "n_dicom": 0}
    dicom = write_phantom_series(tmp_path / "dcm", n_slices=4, size=32)
    err = refusal([a, *dicom])
    assert err.code is RefusalCode.MULTIPLE_VOLUMES and err.details == {"n_nifti": 1, "n_dicom": 4}


def test_four_d(tmp_path: Path) -> None:
    err = refusal([write_four_d(tmp_path / "two.nii", n_volumes=2)])
    assert err.code is RefusalCode.UNSUPPORTED_VOLUME and err.details == {"n_volumes": 2}
    single = load_series([write_four_d(tmp_path / "one.nii", n_volumes=1)])  # 4D with one volume: accepted
    assert single.image.GetDimension() == 3 and single.image.GetSize() == (32, 32, 6)


@pytest.mark.parametrize("kind", ["mr", "normalised", "offset"])
def test_not_hounsfield_units(tmp_path: Path, kind: str) -> None:
    err = refusal([write_not_hu(tmp_path / f"{kind}.nii.gz", kind)])
    assert err.code is RefusalCode.NOT_HOUNSFIELD_UNITS
    assert err.details["air_fraction"] < 0.01 and len(err.details["percentiles_1_50_99"]) == 3


def test_nan_voxels_are_refused(tmp_path: Path) -> None:
    hu, _, px, dz = phantom_volume(6, 32)
    array = hu.astype(np.float32)
    array[3, 10, 10] = np.nan  # SimpleITK would read it as 0 HU
    err = refusal([write_volume(tmp_path / "nan.nii", array, (px, px, dz))])
    assert err.code is RefusalCode.NOT_HOUNSFIELD_UNITS and "NaN" in err.message


def test_damaged_files(tmp_path: Path) -> None:
    assert refusal([write_truncated(tmp_path / "cut.nii")]).code is RefusalCode.INVALID_NIFTI
    gz = write_phantom_nifti(tmp_path / "p.nii.gz", n_slices=6, size=32).read_bytes()
    assert refusal([gz[: len(gz) // 2]]).code is RefusalCode.INVALID_NIFTI  # truncated gzip stream
    rgb = sitk.Compose([sitk.Image(16, 16, 4, sitk.sitkUInt8)] * 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii"))
    assert refusal([tmp_path / "rgb.nii"]).code is RefusalCode.UNSUPPORTED_VOLUME


def test_compressed_volume_bomb_is_refused(tmp_path: Path) -> None:
    """A constant volume compresses about 1000:1: over the ratio limit while it is being decompressed."""
    path = write_volume(tmp_path / "flat.nii.gz", np.full((40, 256, 256), -1000, np.int16))
    err = refusal([path], limits=ArchiveLimits(max_compression_ratio=50))
    assert err.code is RefusalCode.ARCHIVE_LIMIT_EXCEEDED and err.details["limit"] == "max_compression_ratio"


def test_quality_gate_shared_with_dicom(tmp_path: Path) -> None:
    hu, _, px, dz = phantom_volume(8, 48)
    sagittal = write_volume(tmp_path / "sag.nii", hu, (px, px, dz), direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))
    assert refusal([sagittal]).code is RefusalCode.NOT_AXIAL
    tilted_30 = (1, 0, 0, 0, 0.866025, -0.5, 0, 0.5, 0.866025)  # 30 degrees about x: still axial
    assert load_series([write_volume(tmp_path / "t.nii", hu, (px, px, dz), direction=tilted_30)]).slice_count == 8
    two = write_volume(tmp_path / "two.nii", hu[:2], (px, px, dz))
    err = refusal([two])
    assert err.code is RefusalCode.TOO_FEW_SLICES and err.details == {"n_slices": 2, "min_slices": 3}
    assert load_series([two], min_slices=2).slice_count == 2
    metres = patch_header(write_volume(tmp_path / "m.nii", hu, (px, px, dz)), 123, "B", 1)  # units: metre
    assert refusal([metres]).code is RefusalCode.INCONSISTENT_GEOMETRY  # 1.9 m pixels
    unoriented = patch_header(write_volume(tmp_path / "q.nii", hu, (px, px, dz)), 252, "hh", 0, 0)
    err = refusal([unoriented])
    assert err.code is RefusalCode.INCONSISTENT_GEOMETRY and "qform_code" in err.message


def test_inspect_reports_a_nifti_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_phantom_nifti(tmp_path / "p.nii.gz", n_slices=6, size=32)
    report = inspect_inputs([path])
    spacing, origin = phantom_geometry(6, 32)
    assert report["usable"] and report["checks"]["source_kind"] == "nifti"
    assert report["checks"]["spacing_xyz_mm"] == pytest.approx(spacing)
    assert report["objects"] == {"n_files": 1, "n_dicom": 0, "n_nifti": 1, "skipped": {}}
    assert report["warnings"][0]["code"] == "no_dicom_source"
    assert main(["inspect", str(write_four_d(tmp_path / "4d.nii"))]) == 2
    assert json.loads(capsys.readouterr().out)["refusal"]["code"] == "unsupported_volume"


def test_real_normal_head_nifti(normal_head_nifti: Path) -> None:
    """../shared/data/normal_heads/dicom2stl_ct_head.nii.gz: read as HU on its own grid and accepted."""
    series = load_series([normal_head_nifti])
    assert series.source_kind == "nifti" and series.image.GetSize() == (190, 240, 95)
    np.testing.assert_allclose(series.image.GetSpacing(), (1.01, 1.01, 2.5), atol=1e-5)
    reference = sitk.ReadImage(str(normal_head_nifti))
    np.testing.assert_allclose(series.image.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    hu = series.hu_array
    assert hu.min() == pytest.approx(-1024.0) and 3000 < hu.max() < 3100
    assert np.isclose(np.median(hu[(hu > 0) & (hu < 80)]), 30.0, atol=15.0)  # brain parenchyma
