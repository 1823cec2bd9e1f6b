"""DICOM SR measurement report and secondary-capture summary: content read back with highdicom and dcmtk, study
and patient modules of the source, stable UIDs, the SEG reference, the refusal SR."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from app.outputs import CompactResult
from app.outputs.result_uids import ResultUids
from app.outputs.sr import build_refusal_sr, sr_bytes
from app.outputs.summary import RESEARCH_ONLY
from tests.service_fixtures import write_phantom_series
from tests.system_components import require_executable

N_SLICES, SIZE = 8, 32


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    paths = write_phantom_series(tmp_path_factory.mktemp("src"), n_slices=N_SLICES, size=SIZE)
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _document(detected: bool, volume: float = 12.345) -> dict:
    return {
        "model": {"name": "test-small", "version": "0.0.1", "sha256": "0" * 64},
        "haematoma": {"detected": detected, "volume_ml": volume if detected else 0.0,
                      "abc2_volume_ml": 13.5 if detected else 0.0},
        "expansion": {"probability": 0.42 if detected else None, "threshold": 0.3,
                      "predicted": True if detected else None,
                      "reason": None if detected else "no_haematoma_detected"},
    }


def _compact(headers: list[pydicom.Dataset], detected: bool = True) -> CompactResult:
    mask = np.zeros((N_SLICES, SIZE, SIZE), np.uint8)
    if detected:
        mask[3:6, 10:20, 12:22] = 1
    img = sitk.GetImageFromArray(mask)
    px = float(headers[0].PixelSpacing[0])
    img.SetSpacing((px, px, 5.0))
    img.SetOrigin(tuple(float(v) for v in headers[0].ImagePositionPatient))
    hu = np.where(mask > 0, 65.0, 35.0).astype(np.float32)
    series = type("S", (), {"source_headers": headers, "hu_array": hu})()
    compact = CompactResult.from_arrays(series, img, mask, algorithm_name="test-small", algorithm_version="0.0.1",
                                        detected=detected)
    return compact.with_document(_document(detected))


def test_sr_reports_the_document_in_the_source_study_and_references_the_seg(headers: list[pydicom.Dataset]) -> None:
    compact = _compact(headers)
    files = compact.render_all()
    assert {"seg.dcm", "sr.dcm", "summary.dcm"} <= set(files)
    sr = hd.sr.srread(io.BytesIO(files["sr.dcm"]))
    seg = pydicom.dcmread(io.BytesIO(files["seg.dcm"]))
    src = headers[0]
    assert sr.StudyInstanceUID == src.StudyInstanceUID == seg.StudyInstanceUID
    assert sr.PatientID == src.PatientID and sr.PatientName == src.PatientName
    assert sr.SeriesInstanceUID not in (src.SeriesInstanceUID, seg.SeriesInstanceUID)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    volumes = group.get_measurements(name=codes.SCT.Volume)
    plain = [m for m in volumes if m.method is None]
    abc2 = [m for m in volumes if m.method is not None]
    assert plain[0].value == pytest.approx(12.345) and plain[0].unit.value == "ml"
    assert abc2[0].value == pytest.approx(13.5) and abc2[0].method.meaning == "ABC/2"
    names = {m.name.meaning: m.value for m in group.get_measurements()}
    assert names["Probability of haematoma expansion"] == pytest.approx(0.42)
    evaluations = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
    assert evaluations["Haematoma expansion predicted"] == "Yes"
    ref = group.referenced_segment[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID and ref.ReferencedSegmentNumber == 1
    referenced = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for s in study.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
    assert {h.SOPInstanceUID for h in headers} | {seg.SOPInstanceUID} == referenced
    assert sr.ManufacturerModelName == "test-small" and sr.SoftwareVersions == "0.0.1"


def test_result_uids_are_stable_per_result(headers: list[pydicom.Dataset]) -> None:
    first, again = _compact(headers).render_all(), _compact(headers).render_all()
    for name in ("seg.dcm", "sr.dcm", "summary.dcm"):
        a, b = pydicom.dcmread(io.BytesIO(first[name])), pydicom.dcmread(io.BytesIO(again[name]))
        assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID), name
    other = ResultUids.for_sources([h.SOPInstanceUID for h in headers[1:]], "test-small", "0.0.1")
    assert other.instance("sr") != pydicom.dcmread(io.BytesIO(first["sr.dcm"])).SOPInstanceUID
    assert ResultUids.for_sources(["1.2", "1.3"], "m", "1").instance("sr") != ResultUids.for_sources(
        ["1.2", "1.3"], "m", "2").instance("sr")


def test_sr_without_haematoma_states_the_reason(headers: list[pydicom.Dataset]) -> None:
    sr = hd.sr.srread(io.BytesIO(_compact(headers, detected=False).render("sr.dcm")))
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    evaluations = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
    assert evaluations["Haematoma detected"].meaning == "No"
    reason = evaluations["Haematoma expansion not assessed"]
    assert reason.value == "no_haematoma_detected" and reason.meaning == "No haematoma detected"
    assert "Probability of haematoma expansion" not in {m.name.meaning for m in group.get_measurements()}


def test_sr_reads_with_dcmtk(headers: list[pydicom.Dataset], tmp_path: Path) -> None:
    dsrdump = require_executable("dsrdump", "dcmtk")
    path = tmp_path / "sr.dcm"
    path.write_bytes(_compact(headers).render("sr.dcm"))
    proc = subprocess.run([str(dsrdump), str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Comprehensive 3D SR" in proc.stdout
    assert '"12.345" (ml,UCUM' in proc.stdout and '"0.42" (1,UCUM' in proc.stdout
    assert "Referenced Segment" in proc.stdout and "Imaging Measurement Report" in proc.stdout


def test_summary_burns_in_outline_and_text(headers: list[pydicom.Dataset]) -> None:
    compact = _compact(headers)
    sc = pydicom.dcmread(io.BytesIO(compact.render("summary.dcm")))
    assert sc.StudyInstanceUID == headers[0].StudyInstanceUID and sc.PatientID == headers[0].PatientID
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and sc.BurnedInAnnotation == "YES"
    rgb = sc.pixel_array
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and sc.PhotometricInterpretation == "RGB"
    red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)
    assert red.any()  # the outline of the haematoma
    assert ((rgb[..., 0] == 255) & (rgb[..., 1] == 210)).any()  # the research-use line (yellow)
    assert RESEARCH_ONLY in sc.ImageComments and "12.3 ml" in sc.ImageComments and "0.42" in sc.ImageComments
    empty = pydicom.dcmread(io.BytesIO(_compact(headers, detected=False).render("summary.dcm")))
    assert "no haematoma detected" in empty.ImageComments
    assert not ((empty.pixel_array[..., 0] == 255) & (empty.pixel_array[..., 1] == 0)).any()


def test_document_files_need_the_document(headers: list[pydicom.Dataset]) -> None:
    bare = CompactResult.from_arrays(type("S", (), {"source_headers": headers,
                                                    "hu_array": np.zeros((N_SLICES, SIZE, SIZE), np.float32)})(),
                                     sitk.GetImageFromArray(np.zeros((N_SLICES, SIZE, SIZE), np.uint8)),
                                     np.zeros((N_SLICES, SIZE, SIZE), np.uint8), algorithm_name="m",
                                     algorithm_version="1")
    assert bare.unavailable("sr.dcm").code == "needs_result_document"
    assert set(bare.available_files) == {"mask.nii.gz", "seg.dcm", "overlay.png"}


def test_refusal_sr_states_the_code(headers: list[pydicom.Dataset]) -> None:
    uids = ResultUids.for_sources([h.SOPInstanceUID for h in headers], "test-small", "0.0.1")
    sr = hd.sr.srread(io.BytesIO(sr_bytes(build_refusal_sr(headers, "missing_slices", uids))))
    assert sr.StudyInstanceUID == headers[0].StudyInstanceUID
    group = sr.content.get_image_measurement_groups()[0]
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name.meaning == "Analysis refused" and evaluation.value.value == "missing_slices"
    assert evaluation.value.meaning == "Missing slices"


def test_sr_reports_the_ncct_markers_and_the_bat_score(headers: list[pydicom.Dataset]) -> None:
    document = _document(True)
    document["ncct_markers"] = {
        "blend": {"present": True, "measurement": "blend_contrast_hu", "value": 24.5, "unit": "HU",
                  "threshold": 14.8},
        "hypodensity": {"present": False, "measurement": "darkness_max_hu", "value": 3.25, "unit": "HU",
                        "threshold": 8.0},
    }
    document["bat"] = {"score": 1, "points": {"blend": 1, "hypodensity": 0, "onset_lt_2_5h": None},
                       "complete": False}
    sr = hd.sr.srread(io.BytesIO(_compact(headers).with_document(document).render("sr.dcm")))
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    evaluations = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
    values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    assert evaluations["NCCT marker blend"] == "Yes" and evaluations["NCCT marker hypodensity"] == "No"
    assert values["NCCT marker blend measurement"] == (pytest.approx(24.5), "[hnsf'U]")
    assert values["BAT score"][0] == pytest.approx(1.0)
    assert evaluations["BAT score includes the onset time"] == "No"
