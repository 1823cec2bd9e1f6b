"""Input expansion: content sniffing, ZIP archives (DICOMDIR, nesting, non-DICOM members) and archive limits."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import write_ct_series, write_dicomdir_zip, zip_paths

from app.errors import IngestionError, RefusalCode
from app.ingestion import ArchiveLimits, inspect_inputs, load_series


def refusal(inputs, **kwargs) -> IngestionError:
    with pytest.raises(IngestionError) as info:
        load_series(inputs, **kwargs)
    return info.value


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return write_ct_series(tmp_path / "series", n_slices=5, rows=32, cols=32, seed=4)


def test_zip_with_dicomdir_and_nested_folders(tmp_path: Path, series: list[Path]) -> None:
    blob = write_dicomdir_zip(series, tmp_path)
    names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    assert "DICOMDIR" in names and any("/" in n for n in names)
    s = load_series([blob])
    ref = load_series([tmp_path / "series"])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(s.image), sitk.GetArrayFromImage(ref.image))
    report = inspect_inputs([blob])
    assert report["objects"]["skipped"] == {"directory": 1, "not_dicom": 1}


def test_zip_file_on_disk_and_nested_zip(tmp_path: Path, series: list[Path]) -> None:
    inner = zip_paths(series, extra={"notes.txt": b"hello"})
    outer = zip_paths([], extra={"inner.zip": inner, "deeper/readme.md": b"# x"})
    path = tmp_path / "upload.bin"  # name says nothing: detected by content
    path.write_bytes(outer)
    assert load_series([path]).image.GetSize()[2] == 5
    err = refusal([path], limits=ArchiveLimits(max_nesting=1))
    assert err.code is RefusalCode.ARCHIVE_LIMIT_EXCEEDED and err.details["limit"] == "max_nesting"


def test_dicom_detected_by_content_not_name(tmp_path: Path, series: list[Path]) -> None:
    (tmp_path / "mixed").mkdir()
    for i, p in enumerate(series):
        (tmp_path / "mixed" / f"image_{i}.txt").write_bytes(p.read_bytes())
    (tmp_path / "mixed" / "fake.dcm").write_bytes(b"\0" * 128 + b"DICN" + b"garbage" * 10)
    (tmp_path / "mixed" / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    report = inspect_inputs([tmp_path / "mixed"])
    assert report["usable"] and report["objects"]["skipped"] == {"not_dicom": 2}


def test_preambleless_dataset_is_detected(series: list[Path]) -> None:
    blobs = []
    for p in series:
        ds = pydicom.dcmread(p)
        del ds.file_meta  # keep the bare dataset: no preamble, no file meta
        ds.preamble = None
        bare = io.BytesIO()
        pydicom.dcmwrite(bare, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
        data = bare.getvalue()
        assert data[128:132] != b"DICM"
        blobs.append(data)
    assert load_series(blobs).image.GetSize()[2] == 5


def test_not_dicom_and_empty(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"hello world" * 50)
    assert refusal([tmp_path]).code is RefusalCode.NOT_DICOM
    (tmp_path / "empty").mkdir()
    assert refusal([tmp_path / "empty"]).code is RefusalCode.EMPTY_INPUT
    assert refusal([]).code is RefusalCode.EMPTY_INPUT
    assert refusal([tmp_path / "does-not-exist"]).code is RefusalCode.EMPTY_INPUT


def test_invalid_zip(series: list[Path]) -> None:
    blob = zip_paths(series)
    assert refusal([blob[: len(blob) // 2]]).code is RefusalCode.ARCHIVE_INVALID


def test_member_count_limit(series: list[Path]) -> None:
    err = refusal([zip_paths(series)], limits=ArchiveLimits(max_members=3))
    assert err.code is RefusalCode.ARCHIVE_LIMIT_EXCEEDED and err.details["limit"] == "max_members"


def test_total_size_limit(series: list[Path]) -> None:
    err = refusal([zip_paths(series)], limits=ArchiveLimits(max_total_bytes=4000))
    assert err.code is RefusalCode.ARCHIVE_LIMIT_EXCEEDED and err.details["limit"] == "max_total_bytes"


def test_zip_bomb_ratio_measured_while_decompressing() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.bin", b"\0" * (20 * 1024 * 1024))  # ~1000:1
    err = refusal([buf.getvalue()])
    assert err.code is RefusalCode.ARCHIVE_LIMIT_EXCEEDED and err.details["limit"] == "max_compression_ratio"
