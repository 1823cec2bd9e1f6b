"""Ingestion of the real third-party files in ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from app.errors import IngestionError, RefusalCode, WarningCode
from app.ingestion import inspect_inputs, load_series

LOSSLESS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.90"}


def refusal(inputs, **kwargs) -> IngestionError:
    with pytest.raises(IngestionError) as info:
        load_series(inputs, **kwargs)
    return info.value


def ref_iop(shared: Path, name: str) -> list[float]:
    return json.loads((shared / "dcm_qa_ct" / "Ref" / name).read_text())["ImageOrientationPatientDICOM"]


def plane_centroids_match(series, folder: Path, tol_mm: float = 0.2, bias_mm: float = 0.05) -> int:
    """For every source slice whose plane coincides with an output plane, compare the physical centre of mass
    of (HU + 1024) in the source slice (placed by its own IPP/IOP) and in the output plane (placed by the
    volume's origin/spacing/direction): a misplaced or mis-sheared volume moves it by millimetres.
    Tolerances: per slice 0.2 mm (under half a pixel: in-plane interpolation at the image border moves a
    little mass), and 0.05 mm for the mean offset over all slices."""
    img = series.image
    arr = sitk.GetArrayViewFromImage(img)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    n = direction[:, 2]
    origin = np.asarray(img.GetOrigin())
    dz = img.GetSpacing()[2]
    files = {}
    for path in folder.rglob("I*") if folder.name != "GE" else folder.glob("*.dcm"):
        files[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    checked = 0
    offsets: list[np.ndarray] = []
    for sl in series.slices:
        j = (np.asarray(sl.position) - origin) @ n / dz
        if abs(j - round(j)) > 0.005 or not 0 <= round(j) < arr.shape[0]:
            continue
        ds = pydicom.dcmread(files[sl.sop_instance_uid])
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        w_src = np.clip(hu + 1024.0, 0.0, None)  # linear in HU: preserved by linear interpolation
        rr, cc = np.indices(hu.shape)
        src = (np.asarray(sl.position)
               + np.outer((cc * w_src).sum() / w_src.sum() * sl.pixel_spacing[1], sl.row_direction)
               + np.outer((rr * w_src).sum() / w_src.sum() * sl.pixel_spacing[0], sl.column_direction))[0]
        plane = np.clip(np.asarray(arr[round(j)], dtype=np.float64) + 1024.0, 0.0, None)
        yy, xx = np.indices(plane.shape)
        sx, sy = img.GetSpacing()[:2]
        out = (origin + round(j) * dz * n + (xx * plane).sum() / plane.sum() * sx * direction[:, 0]
               + (yy * plane).sum() / plane.sum() * sy * direction[:, 1])
        np.testing.assert_allclose(out, src, atol=tol_mm)  # per slice: border pixels blur it a little
        offsets.append(out - src)
        checked += 1
    # no systematic offset (a half-pixel or origin error would show here)
    assert np.all(np.abs(np.mean(offsets, axis=0)) < bias_mm), np.mean(offsets, axis=0)
    return checked


def test_philips_untilted_head_series(shared_data: Path) -> None:
    folder = shared_data / "dcm_qa_ct" / "In" / "Philips" / "S21570"
    s = load_series([folder])
    img = s.image
    assert img.GetSize() == (512, 512, 28) and not s.resampled
    assert img.GetSpacing() == pytest.approx((0.451171875, 0.451171875, 5.0))
    assert img.GetOrigin() == pytest.approx((-115.5, -1.85, 696.21))
    iop = ref_iop(shared_data, "1A_TRAUMA_PLAIN_HEAD_DM_Head_201.json")
    np.testing.assert_allclose(np.asarray(img.GetDirection()).reshape(3, 3)[:, :2].T.ravel(), iop, atol=1e-6)
    first = pydicom.dcmread(folder / "S2010" / "I10")
    np.testing.assert_array_equal(s.hu_array[0], first.pixel_array.astype(np.float32) - 1024)
    assert [w.code for w in s.warnings] == [WarningCode.SKIPPED_OBJECTS]
    assert s.warnings[0].details["counts"] == {"directory": 4, "localizer": 1, "secondary_capture": 6}
    summary = next(x for x in s.series_found if x.series_instance_uid == s.series_instance_uid)
    assert summary.series_description == "STD BRAIN 5MM" and summary.n_instances == 28


def test_ge_tilted_variable_spacing(shared_data: Path) -> None:
    s = load_series([shared_data / "dcm_qa_ct" / "In" / "GE"])
    assert s.resampled and len(s.slices) == 28
    found = {w.code: w for w in s.warnings}
    assert found[WarningCode.GANTRY_TILT_CORRECTED].details["tilt_deg"] == pytest.approx(18.5, abs=0.2)
    assert WarningCode.NON_UNIFORM_SPACING_RESAMPLED in found
    direction = np.asarray(s.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, :2].T.ravel(), ref_iop(shared_data, "_2.json"), atol=1e-5)
    sx, sy, sz = s.image.GetSpacing()
    assert (sx, sy) == pytest.approx((0.4882812, 0.4882812))
    assert sz == pytest.approx(4.22 * np.cos(np.radians(18.5)), abs=0.01)  # median step along the normal
    # padding (-1500) became air, and the head is real CT
    arr = s.hu_array
    assert arr.min() >= -1024.0 and arr.max() > 1000
    assert plane_centroids_match(s, shared_data / "dcm_qa_ct" / "In" / "GE") >= 10


@pytest.mark.parametrize(("sub", "n", "iop_ref"), [("S2010", 54, "1F_STEREOTAXIS_Head_201.json"),
                                                   ("S3010", 58, "1F_STEREOTAXIS_Head_301.json")])
def test_philips_tilted_both_ways(shared_data: Path, sub: str, n: int, iop_ref: str) -> None:
    folder = shared_data / "dcm_qa_ct" / "In" / "Philips" / "S21610"
    uid = str(pydicom.dcmread(next((folder / sub).glob("I*")), stop_before_pixels=True).SeriesInstanceUID)
    s = load_series([folder], series_instance_uid=uid)
    assert len(s.slices) == n and s.resampled
    assert s.image.GetSize()[2] == n  # evenly spaced: one output plane per source slice
    assert WarningCode.GANTRY_TILT_CORRECTED in {w.code for w in s.warnings}
    assert WarningCode.NON_UNIFORM_SPACING_RESAMPLED not in {w.code for w in s.warnings}
    direction = np.asarray(s.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, :2].T.ravel(), ref_iop(shared_data, iop_ref), atol=1e-5)
    assert plane_centroids_match(s, folder / sub) == n


def test_whole_dcm_qa_ct_folder_chooses_a_series_and_lists_all(shared_data: Path) -> None:
    report = inspect_inputs([shared_data / "dcm_qa_ct"])
    assert report["usable"]
    assert sorted(x["n_instances"] for x in report["series_found"]) == [28, 28, 54, 58]
    chosen = next(x for x in report["series_found"] if x["series_instance_uid"] == report["chosen_series"])
    assert chosen["n_instances"] == 58  # most slices among ORIGINAL/PRIMARY/AXIAL candidates
    skipped = report["objects"]["skipped"]
    assert skipped["localizer"] == 2 and skipped["secondary_capture"] == 11 and skipped["directory"] == 11


def _expected_rows(shared: Path) -> dict[str, dict[str, str]]:
    with open(shared / "cornerstone_ct_transfer_syntaxes" / "expected_decode.csv", newline="") as fh:
        return {r["file"]: r for r in csv.DictReader(fh)}


def test_cornerstone_transfer_syntaxes(shared_data: Path) -> None:
    folder = shared_data / "cornerstone_ct_transfer_syntaxes"
    rows = _expected_rows(shared_data)
    reference = load_series([folder / "CTImage.dcm"], min_slices=1).hu_array[0].astype(np.float64)
    seen_lossless = 0
    for name, row in rows.items():
        if not name.startswith("CTImage.dcm"):
            continue
        ts = row["transfer_syntax_uid"]
        if ts in LOSSLESS:
            s = load_series([folder / name], min_slices=1)
            hu = s.hu_array[0].astype(np.float64)
            assert hashlib.md5(hu.tobytes()).hexdigest() == row["md5_hu_float64"], name
            assert s.transfer_syntaxes == [ts]
            seen_lossless += 1
        elif row["decode_note"]:
            err = refusal([folder / name], min_slices=1)
            assert err.code is RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX and ts in err.message
        else:
            s = load_series([folder / name], min_slices=1)
            hu = s.hu_array[0].astype(np.float64)
            assert WarningCode.LOSSY_COMPRESSION in {w.code for w in s.warnings}
            assert float(hu.min()) == pytest.approx(float(row["hu_min"]), abs=0.01), name
            assert float(hu.max()) == pytest.approx(float(row["hu_max"]), abs=0.01), name
            assert np.abs(hu - reference).mean() < 25.0, name
    assert seen_lossless == 10  # CTImage.dcm itself + 9 lossless re-encodings


def test_wg04_j2k_samples(shared_data: Path) -> None:
    folder = shared_data / "cornerstone_ct_transfer_syntaxes"
    rows = _expected_rows(shared_data)
    for name in ("CT1_J2KR", "CT2_J2KR"):
        ds = pydicom.dcmread(folder / name)
        hu = load_series([folder / name], min_slices=1).hu_array[0].astype(np.float64)
        raw_hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert hashlib.md5(raw_hu.tobytes()).hexdigest() == rows[name]["md5_hu_float64"]
        if "PixelPaddingValue" in ds:  # padding pixels become air, everything else is untouched
            pad = ds.pixel_array == ds.PixelPaddingValue
            assert pad.any() and (hu[pad] == -1024).all()
            np.testing.assert_array_equal(hu[~pad], raw_hu[~pad])
        else:
            np.testing.assert_array_equal(hu, raw_hu)


def test_non_image_and_non_ct_objects(shared_data: Path) -> None:
    folder = shared_data / "cornerstone_ct_transfer_syntaxes"
    assert refusal([folder / "no-pixel-data.dcm"], min_slices=1).code is RefusalCode.NO_IMAGE_SERIES
    err = refusal([folder / "no-pixel-spacing.dcm"], min_slices=1)
    assert err.code is RefusalCode.NOT_CT and err.details["modalities"] == ["US"]
    err = refusal([folder / "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"], min_slices=1)
    assert err.code is RefusalCode.UNSUPPORTED_SOP_CLASS
    # mixed with a usable CT slice, the odd objects are skipped and counted
    report = inspect_inputs([folder / "no-pixel-data.dcm", folder / "no-pixel-spacing.dcm",
                             folder / "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm", folder / "CTImage.dcm"],
                            min_slices=1)
    assert report["usable"]
    assert report["objects"]["skipped"] == {"enhanced_multiframe": 1, "no_pixel_data": 1, "non_ct_modality": 1}


def test_mr_series_refused_not_ct(shared_data: Path) -> None:
    err = refusal([shared_data / "dcm_qa_ts_mr" / "In"])
    assert err.code is RefusalCode.NOT_CT and err.details["modalities"] == ["MR"]
