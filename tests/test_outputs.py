"""NIfTI, DICOM SEG and PNG outputs on real SimpleITK images and pydicom/highdicom objects."""

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
