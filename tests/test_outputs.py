"""NIfTI, DICOM SEG and PNG outputs on real SimpleITK images and pydicom/highdicom objects, and the compact
result they are rendered from. Budget: a few seconds."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from service_fixtures import write_phantom_series

from app.outputs import (
    build_seg,
    key_slices,
    mask_nifti_bytes,
    render_overlay_png,
    seg_bytes,
    write_mask_nifti,
)


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    paths = write_phantom_series(tmp_path_factory.mktemp("seg"), n_slices=6, size=32)
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def test_nifti_keeps_geometry(tmp_path: Path) -> None:
    arr = np.zeros((5, 6, 7), np.uint8)
    arr[2, 3, 4] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin((-10.0, 20.0, 5.5))
    img.SetSpacing((0.5, 0.7, 5.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    back = sitk.ReadImage(str(write_mask_nifti(img, tmp_path / "m.nii.gz")))
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert mask_nifti_bytes(img)[:2] == b"\x1f\x8b"  # gzip
    with pytest.raises(ValueError):
        write_mask_nifti(img, tmp_path / "m.png")


def test_seg_references_every_instance(headers: list[pydicom.Dataset]) -> None:
    masks = np.zeros((len(headers), 32, 32), np.uint8)
    masks[2, 10:20, 12:18] = 1
    masks[3, 11:19, 12:16] = 1
    data = seg_bytes(build_seg(headers, masks, algorithm_name="test", algorithm_version="1"))
    seg = hd.seg.segread(io.BytesIO(data))
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {h.SOPInstanceUID for h in headers}
    vol = seg.get_volume(combine_segments=True)
    assert int(vol.array.sum()) == int(masks.sum())


def test_seg_empty_mask_and_shape_check(headers: list[pydicom.Dataset]) -> None:
    empty = np.zeros((len(headers), 32, 32), np.uint8)
    seg = build_seg(headers, empty, algorithm_name="t", algorithm_version="1")
    assert int(seg.NumberOfFrames) == len(headers)
    with pytest.raises(ValueError):
        build_seg(headers, empty[:-1], algorithm_name="t", algorithm_version="1")


def test_key_slices_and_png() -> None:
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[4:7, 5:10, 5:10] = 1
    mask[5, 4:12, 4:12] = 1
    picks = key_slices(mask, 3)
    assert 5 in picks and len(picks) == 3 and all(4 <= z <= 6 for z in picks)
    assert key_slices(np.zeros((10, 4, 4), np.uint8), 3) == [4, 5, 6]
    png = render_overlay_png(np.full(mask.shape, 40.0), mask, (5.0, 0.5, 0.5))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        render_overlay_png(np.zeros((2, 3, 3)), np.zeros((2, 3, 4), np.uint8), (1, 1, 1))


def _decode_png_rgb(data: bytes) -> np.ndarray:
    """Minimal decoder for the writer's own format (8-bit RGB, filter 0 on every row), independent of it."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02"  # 8-bit RGB
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert size is not None
    width, height = size
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


def test_png_pixels_window_outline_and_aspect() -> None:
    hu = np.zeros((4, 20, 10), np.float32)
    hu[:, :, 5:] = 80.0  # right half white in a 0-80 HU window
    mask = np.zeros(hu.shape, np.uint8)
    mask[2, 5:15, 2:8] = 1
    png = render_overlay_png(hu, mask, (5.0, 1.0, 1.0), n_slices=1)
    rgb = _decode_png_rgb(png)
    assert rgb.shape == (20, 10, 3)
    red = (rgb == (255, 0, 0)).all(axis=2)
    expected_edge = np.zeros((20, 10), bool)
    expected_edge[5:15, 2:8] = True
    expected_edge[6:14, 3:7] = False
    assert np.array_equal(red, expected_edge)  # the inner boundary, nothing else
    assert (rgb[0, 0] == 0).all() and (rgb[0, 9] == 255).all()
    assert b"slices 3/4" in png  # tEXt: 1-based slice numbers
    # pixel spacing 0.5 mm (y) x 1 mm (x): rows are halved so that anatomy keeps its proportions
    wide = _decode_png_rgb(render_overlay_png(hu, mask, (5.0, 0.5, 1.0), n_slices=3))
    assert wide.shape == (10, 3 * 10 + 2 * 4, 3)


def test_compact_result_renders_the_same_files(headers: list[pydicom.Dataset]) -> None:
    from types import SimpleNamespace

    from app.outputs import CompactResult

    rng = np.random.default_rng(3)
    arr = (rng.random((len(headers), 32, 32)) > 0.7).astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin((-15.5, -15.5, -12.5))
    img.SetSpacing((1.0, 1.0, 5.0))
    hu_img = sitk.GetImageFromArray(rng.normal(40, 10, arr.shape).astype(np.float32))
    hu_img.CopyInformation(img)
    series = SimpleNamespace(source_headers=headers, hu_array=sitk.GetArrayFromImage(hu_img))
    compact = CompactResult.from_arrays(series, img, arr, algorithm_name="t", algorithm_version="1")
    assert compact.slice_mask_bits is None  # identical per-slice masks are not stored twice
    assert compact.mask_bits.nbytes == arr.size // 8
    back = compact.mask_image()
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetOrigin() == img.GetOrigin() and back.GetSpacing() == img.GetSpacing()
    files = compact.render_all()
    assert set(files) == {"mask.nii.gz", "seg.dcm", "overlay.png"}
    seg = hd.seg.segread(io.BytesIO(files["seg.dcm"]))
    assert int(seg.get_volume(combine_segments=True).array.sum()) == int(arr.sum())
    with pytest.raises(KeyError):
        compact.render("other.bin")
    shifted = np.roll(arr, 1, axis=2)  # per-instance masks that differ (resampled series) are kept separately
    other = CompactResult.from_arrays(series, img, shifted, algorithm_name="t", algorithm_version="1")
    assert other.slice_mask_bits is not None and np.array_equal(other.source_slice_masks(), shifted)
    with pytest.raises(ValueError):
        CompactResult.from_arrays(series, img, arr[:-1], algorithm_name="t", algorithm_version="1")


def test_seg_from_anonymised_headers_missing_type2_attributes(headers: list[pydicom.Dataset]) -> None:
    """Regression (SEG from anonymised headers): highdicom reads PatientBirthDate, PatientSex, ... of the first source; an
    anonymised series without them still gives a valid SEG, and the caller's headers stay unchanged."""
    import copy

    stripped = [copy.deepcopy(h) for h in headers]
    for h in stripped:
        for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
            if keyword in h:
                delattr(h, keyword)
    masks = np.zeros((len(stripped), 32, 32), np.uint8)
    masks[2, 10:20, 12:18] = 1
    seg = hd.seg.segread(io.BytesIO(seg_bytes(build_seg(stripped, masks, algorithm_name="t",
                                                             algorithm_version="1"))))
    assert seg.PatientBirthDate == "" and seg.PatientSex == "" and seg.PatientID == headers[0].PatientID
    assert "PatientBirthDate" not in stripped[0] and "PatientSex" not in stripped[0]
    assert int(seg.get_volume(combine_segments=True).array.sum()) == int(masks.sum())
