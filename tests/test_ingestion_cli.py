"""``python -m app inspect`` and ``python -m app convert`` (in-process through app.cli.main)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import write_ct_series

from app.cli import main
from app.ingestion import load_series


def test_inspect_usable_and_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ct_series(tmp_path / "ct", n_slices=4)
    assert main(["inspect", str(tmp_path / "ct")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] and report["checks"]["size_xyz"] == [64, 64, 4]
    write_ct_series(tmp_path / "mr", n_slices=4, modality="MR")
    assert main(["inspect", str(tmp_path / "mr")]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["refusal"]["code"] == "not_ct" and report["usable"] is False


def test_inspect_named_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_ct_series(tmp_path / "a", n_slices=4)
    write_ct_series(tmp_path / "b", n_slices=4)
    assert main(["inspect", str(tmp_path)]) == 2
    assert json.loads(capsys.readouterr().out)["refusal"]["code"] == "ambiguous_series"
    uid = str(pydicom.dcmread(a[0]).SeriesInstanceUID)
    assert main(["inspect", str(tmp_path), "--series", uid]) == 0
    assert json.loads(capsys.readouterr().out)["chosen_series"] == uid


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_convert_writes_hu_nifti_with_geometry(tmp_path: Path, dtype: str, capsys) -> None:
    write_ct_series(tmp_path / "ct", n_slices=5, tilt_deg=12.0, spacing=4.0)
    out = tmp_path / "out" / "ct.nii.gz"
    assert main(["convert", str(tmp_path / "ct"), "--out", str(out), "--dtype", dtype]) == 0
    img = sitk.ReadImage(str(out))
    ref = load_series([tmp_path / "ct"]).image
    assert img.GetSize() == ref.GetSize()
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-5)
    expected = sitk.GetArrayFromImage(ref)
    got = sitk.GetArrayFromImage(img)
    if dtype == "int16":
        assert got.dtype == np.int16
        np.testing.assert_array_equal(got, np.rint(expected).astype(np.int16))
    else:
        np.testing.assert_array_equal(got, expected)


def test_convert_single_slice_and_refusal(tmp_path: Path, capsys) -> None:
    write_ct_series(tmp_path / "one", n_slices=1)
    assert main(["convert", str(tmp_path / "one"), "--out", str(tmp_path / "one.nii.gz")]) == 0
    assert sitk.ReadImage(str(tmp_path / "one.nii.gz")).GetSize() == (64, 64, 1)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_bytes(b"not dicom at all" * 20)
    assert main(["convert", str(tmp_path / "junk"), "--out", str(tmp_path / "j.nii.gz")]) == 2
    assert json.loads(capsys.readouterr().err)["refusal"]["code"] == "not_dicom"
    assert not (tmp_path / "j.nii.gz").exists()


def test_real_philips_series_through_the_cli(shared_data: Path, tmp_path: Path, capsys) -> None:
    folder = shared_data / "dcm_qa_ct" / "In" / "Philips" / "S21570"
    out = tmp_path / "philips.nii.gz"
    assert main(["convert", str(folder), "--out", str(out)]) == 0
    img = sitk.ReadImage(str(out))
    assert img.GetSize() == (512, 512, 28)
    np.testing.assert_allclose(img.GetOrigin(), (-115.5, -1.85, 696.21), atol=1e-3)
    first = pydicom.dcmread(folder / "S2010" / "I10")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(img)[0], first.pixel_array.astype(np.int16) - 1024)
    capsys.readouterr()
    assert main(["inspect", str(shared_data / "dcm_qa_ts_mr" / "In")]) == 2
    assert json.loads(capsys.readouterr().out)["refusal"]["code"] == "not_ct"
