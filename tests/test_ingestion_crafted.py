"""Ingestion on crafted DICOM series (tests/dicom_factory.py): refusal codes, ordering, tilt, spacing, HU."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import make_ct_dataset, save, sphere_phantom, write_ct_series
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from app.errors import IngestionError, RefusalCode, WarningCode
from app.ingestion import inspect_inputs, load_series


def codes(series) -> set[str]:
    return {str(w.code) for w in series.warnings}


def refusal(inputs, **kwargs) -> IngestionError:
    with pytest.raises(IngestionError) as info:
        load_series(inputs, **kwargs)
    return info.value


def test_plain_series_geometry_and_hu(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=6, rows=40, cols=48, pixel_spacing=(0.6, 0.5), spacing=5.0)
    s = load_series([tmp_path])
    assert s.image.GetSize() == (48, 40, 6)
    assert s.image.GetSpacing() == pytest.approx((0.5, 0.6, 5.0))
    assert s.image.GetOrigin() == pytest.approx((-16.0, -16.0, 0.0))
    assert s.image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert not s.resampled and len(s.slices) == 6 and len(s.source_headers) == 6
    assert [sl.position[2] for sl in s.slices] == pytest.approx([0, 5, 10, 15, 20, 25])
    assert all("PixelData" not in h for h in s.source_headers)
    hu = s.hu_array
    assert hu.dtype == np.float32 and set(np.unique(hu)) == {40.0, 1000.0}
    # slice k of the volume is the instance at slices[k]
    ds = pydicom.dcmread(paths[3])
    assert s.slices[3].sop_instance_uid == ds.SOPInstanceUID
    np.testing.assert_array_equal(hu[3], ds.pixel_array.astype(np.float32) - 1024)


def test_shuffled_file_order_gives_identical_volume(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "a", n_slices=7, seed=1)
    ref = load_series([tmp_path / "a"])
    rng = np.random.default_rng(7)
    shuffled = [paths[i] for i in rng.permutation(len(paths))]
    other = load_series(shuffled)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref.image), sitk.GetArrayFromImage(other.image))
    assert ref.image.GetOrigin() == other.image.GetOrigin()
    # raw bytes in any order, as the HTTP API passes them
    blobs = [p.read_bytes() for p in reversed(shuffled)]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(load_series(blobs).image), sitk.GetArrayFromImage(ref.image))


def test_reversed_stack_is_ordered_by_position_not_instance_number(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=5, positions_mm=[20, 15, 10, 5, 0])
    s = load_series([tmp_path])
    assert [sl.position[2] for sl in s.slices] == pytest.approx([0, 5, 10, 15, 20])


@pytest.mark.parametrize("tilt", [18.5, -16.5])
def test_tilt_correction_puts_a_known_point_where_it_belongs(tmp_path: Path, tilt: float) -> None:
    centre = np.array([3.0, 2.0, 22.0])
    write_ct_series(tmp_path, n_slices=16, rows=72, cols=64, spacing=3.0, tilt_deg=tilt,
                    hu_at=sphere_phantom(centre, radius=5.0, inside=1000.0, background=0.0))
    s = load_series([tmp_path])
    assert s.resampled and WarningCode.GANTRY_TILT_CORRECTED in codes(s)
    tilt_w = next(w for w in s.warnings if w.code is WarningCode.GANTRY_TILT_CORRECTED)
    assert tilt_w.details["tilt_deg"] == pytest.approx(abs(tilt), abs=0.2)
    spacing = s.image.GetSpacing()
    assert spacing[2] == pytest.approx(3.0, abs=1e-4)
    direction = np.asarray(s.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    arr = sitk.GetArrayFromImage(s.image)
    zyx = np.argwhere(arr > 500)
    assert len(zyx) > 100
    weights = arr[arr > 500]
    mean_idx = (zyx * weights[:, None]).sum(0) / weights.sum()
    found = np.asarray(s.image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in mean_idx[::-1])))
    np.testing.assert_allclose(found, centre, atol=0.6)
    # and the volume of the sphere is preserved (4/3 pi r^3 = 523.6 mm3) within the partial-volume error
    voxel = float(np.prod(spacing))
    assert (arr > 500).sum() * voxel == pytest.approx(4 / 3 * math.pi * 125, rel=0.2)


def test_non_uniform_spacing_is_resampled(tmp_path: Path) -> None:
    positions = [0, 4, 8, 12, 16, 23, 30, 37, 44]
    write_ct_series(tmp_path, positions_mm=positions, hu_at=lambda p: p[..., 2] * 10.0)  # HU = 10 * z
    s = load_series([tmp_path])
    assert s.resampled and WarningCode.NON_UNIFORM_SPACING_RESAMPLED in codes(s)
    assert s.image.GetSpacing()[2] == pytest.approx(5.5)  # median of the steps (4,4,4,4,7,7,7,7)
    arr = sitk.GetArrayFromImage(s.image)
    z = np.array([s.image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(arr.shape[0])])
    # linear interpolation along the normal reproduces a linear ramp exactly
    np.testing.assert_allclose(arr[:, 5, 5], 10.0 * z, atol=0.01)
    assert len(s.slices) == len(positions)


def test_missing_slices_refused(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=8, gaps=[4, 5])
    err = refusal([tmp_path])
    assert err.code is RefusalCode.MISSING_SLICES and err.details["gap_mm"] == pytest.approx(15.0)


def test_byte_identical_duplicates_removed(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "s", n_slices=5)
    shutil.copy(paths[2], tmp_path / "s" / "copy_of_2")
    shutil.copy(paths[0], tmp_path / "copy_of_0")
    s = load_series([tmp_path])
    assert s.image.GetSize()[2] == 5
    dup = next(w for w in s.warnings if w.code is WarningCode.DUPLICATES_REMOVED)
    assert dup.details["count"] == 2


def test_same_position_identical_pixels_new_uid_is_a_duplicate(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=4)
    ds = pydicom.dcmread(paths[1])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    save(ds, tmp_path / "resent")
    s = load_series([tmp_path])
    assert s.image.GetSize()[2] == 4 and WarningCode.DUPLICATES_REMOVED in codes(s)


def test_conflicting_duplicates_refused(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=4)
    ds = pydicom.dcmread(paths[1])
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    save(ds, tmp_path / "modified_same_uid")
    assert refusal([tmp_path]).code is RefusalCode.CONFLICTING_DUPLICATES
    # same position, different pixels, different SOPInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (tmp_path / "modified_same_uid").unlink()
    save(ds, tmp_path / "modified_new_uid")
    assert refusal([tmp_path]).code is RefusalCode.CONFLICTING_DUPLICATES


def test_hu_rescale_padding_and_unsigned(tmp_path: Path) -> None:
    def hu(points: np.ndarray) -> np.ndarray:
        out = np.full(points.shape[:-1], 30.0)
        out[points[..., 0] < -12.0] = np.nan  # outside the reconstruction circle -> padding
        return out

    write_ct_series(tmp_path / "signed", n_slices=3, hu_at=hu, pixel_padding=-2000, intercept=0.0)
    write_ct_series(tmp_path / "unsigned", n_slices=3, hu_at=hu, pixel_padding=0, signed=False,
                    slope=0.5, intercept=-1024.0)
    for sub in ("signed", "unsigned"):
        arr = load_series([tmp_path / sub]).hu_array
        assert set(np.unique(arr)) == {-1024.0, 30.0}, sub
        assert (arr[:, :, :8] == -1024.0).all() and (arr[:, :, 9:] == 30.0).all()


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_decode_to_the_same_hu(tmp_path: Path, syntax: str) -> None:
    write_ct_series(tmp_path / "raw", n_slices=3, seed=3, shuffle_names=False)
    write_ct_series(tmp_path / "enc", n_slices=3, seed=3, shuffle_names=False, transfer_syntax=syntax)
    a = load_series([tmp_path / "raw"])
    b = load_series([tmp_path / "enc"])
    assert b.transfer_syntaxes == [syntax]
    np.testing.assert_array_equal(a.hu_array, b.hu_array)


def test_truncated_pixel_data_is_corrupt(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=3)
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    save(ds, paths[1])
    assert refusal([tmp_path]).code is RefusalCode.CORRUPT_PIXEL_DATA


def test_damaged_compressed_pixel_data_is_corrupt(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=3, transfer_syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = ds.PixelData[:200] + b"\x00" * 64
    save(ds, paths[0])
    assert refusal([tmp_path]).code is RefusalCode.CORRUPT_PIXEL_DATA


def test_unsupported_transfer_syntax_names_it(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=3)
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 32])
    save(ds, paths[0])
    err = refusal([tmp_path])
    assert err.code is RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX
    assert "1.2.840.10008.1.2.4.100" in err.message and "MPEG2" in err.message


def test_too_few_slices(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=2)
    err = refusal([tmp_path])
    assert err.code is RefusalCode.TOO_FEW_SLICES
    assert load_series([tmp_path], min_slices=1).image.GetSize()[2] == 2


def test_single_slice_allowed_with_min_slices_1(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=1, spacing=5.0)
    s = load_series([tmp_path], min_slices=1)
    assert s.image.GetSize()[2] == 1 and s.image.GetSpacing()[2] == pytest.approx(5.0)


def test_not_axial(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=5, orientation=(0, 1, 0, 0, 0, -1))  # sagittal reformat
    assert refusal([tmp_path]).code is RefusalCode.NOT_AXIAL


def test_not_ct(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=4, modality="MR")
    err = refusal([tmp_path])
    assert err.code is RefusalCode.NOT_CT and err.details["modalities"] == ["MR"]


def test_inconsistent_geometry(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=4)
    ds = pydicom.dcmread(paths[2])
    del ds.ImagePositionPatient
    save(ds, paths[2])
    assert refusal([tmp_path]).code is RefusalCode.INCONSISTENT_GEOMETRY
    paths = write_ct_series(tmp_path / "b", n_slices=4)
    ds = pydicom.dcmread(paths[1])
    ds.PixelSpacing = [0.7, 0.7]
    save(ds, paths[1])
    assert refusal([tmp_path / "b"]).code is RefusalCode.INCONSISTENT_GEOMETRY


def test_ambiguous_series_and_naming_one(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path / "a", n_slices=5, series_description="A")
    write_ct_series(tmp_path / "b", n_slices=5, series_description="B")
    err = refusal([tmp_path])
    assert err.code is RefusalCode.AMBIGUOUS_SERIES
    listed = err.details["candidates"]
    assert {c["series_description"] for c in listed} == {"A", "B"}
    assert all(c["n_slices"] == 5 and c["slice_thickness_mm"] == 5.0 for c in listed)
    uid = str(pydicom.dcmread(a[0]).SeriesInstanceUID)
    s = load_series([tmp_path], series_instance_uid=uid)
    assert s.series_instance_uid == uid and len(s.series_found) == 2
    assert refusal([tmp_path], series_instance_uid="1.2.3.4").code is RefusalCode.SERIES_NOT_FOUND


def test_selection_rules(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "thin", n_slices=12, spacing=2.0, series_description="THIN")
    write_ct_series(tmp_path / "five", n_slices=12, spacing=5.0, series_description="FIVE")
    write_ct_series(tmp_path / "derived", n_slices=20, spacing=5.0, series_description="MPR",
                    image_type=("DERIVED", "SECONDARY", "AXIAL"))
    s = load_series([tmp_path])
    chosen = next(x for x in s.series_found if x.series_instance_uid == s.series_instance_uid)
    assert chosen.series_description == "FIVE"  # ORIGINAL first, then equal counts -> closest to 5 mm
    assert WarningCode.SERIES_CHOSEN_AUTOMATICALLY in codes(s)
    write_ct_series(tmp_path / "more", n_slices=14, spacing=2.0, series_description="MORE")
    s = load_series([tmp_path])
    assert next(x for x in s.series_found if x.series_instance_uid == s.series_instance_uid).series_description == "MORE"


def test_scout_and_secondary_capture_skipped(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=4)
    series_uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    img = np.zeros((32, 64))
    scout = make_ct_dataset(img, position=(0, -100, 200), orientation=(0, 1, 0, 0, 0, -1), series_uid=series_uid,
                            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    save(scout, tmp_path / "scout")
    # an orthogonal image without LOCALIZER in ImageType, in the same series: split off and not axial
    save(make_ct_dataset(img, position=(0, -100, 200), orientation=(0, 1, 0, 0, 0, -1), series_uid=series_uid),
         tmp_path / "ortho")
    sc = make_ct_dataset(img, position=(0, 0, 0), sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                         image_type=("DERIVED", "SECONDARY"))
    save(sc, tmp_path / "sc")
    s = load_series([tmp_path])
    assert s.image.GetSize()[2] == 4
    skipped = next(w for w in s.warnings if w.code is WarningCode.SKIPPED_OBJECTS)
    assert skipped.details["counts"] == {"localizer": 1, "secondary_capture": 1}
    assert sorted(x.reason or "ok" for x in s.series_found) == ["not_axial", "ok"]


def test_only_scouts_is_no_image_series(tmp_path: Path) -> None:
    scout = make_ct_dataset(np.zeros((16, 16)), position=(0, 0, 0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    save(scout, tmp_path / "scout")
    assert refusal([tmp_path]).code is RefusalCode.NO_IMAGE_SERIES


def test_inspect_report_is_json_and_identifier_free(tmp_path: Path) -> None:
    import json

    write_ct_series(tmp_path, n_slices=4, tilt_deg=10.0)
    report = inspect_inputs([tmp_path])
    text = json.dumps(report)
    assert report["usable"] and report["refusal"] is None
    assert "SYNTHETIC" not in text and "SYN0001" not in text
    assert {w["code"] for w in report["warnings"]} == {"gantry_tilt_corrected"}
    assert report["checks"]["resampled"] is True
    bad = inspect_inputs([tmp_path], series_instance_uid="9.9")
    assert bad["usable"] is False and bad["refusal"]["code"] == "series_not_found"
    assert len(bad["series_found"]) == 1
