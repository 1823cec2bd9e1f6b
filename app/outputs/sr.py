"""DICOM SR measurement report (TID 1500, highdicom Comprehensive 3D SR) of one prediction, and the refusal SR.

The report shares the study, patient and frame of reference of the analysed series (the patient and study modules
are copied from the first source header, as the standard requires), lists every source instance as evidence (the
image library holds the first one only: one entry per instance made the report about 30 times slower to build,
for nothing a viewer reads), and holds one volumetric measurement group (TID 1411) that references segment 1 of the
result's DICOM SEG by its SOP Instance UID (:mod:`app.outputs.result_uids`, so the SEG need not be built).

The group's content comes from the result document (the JSON of ``POST /v1/predictions``) through the item
builders in :data:`REPORT_ITEM_BUILDERS`: each takes the document and returns measurements (numeric, with a UCUM
unit) and qualitative evaluations (coded). A further finding is added by writing one more builder and appending
it to that tuple; nothing else changes. The default builders report:

* the haematoma volume of the mask, mL (UCUM ``ml``), and the ABC/2 estimate, mL (method ``ABC/2``);
* haematoma detected (yes/no);
* the calibrated expansion probability (UCUM ``1``) and the decision threshold, and the decision (yes/no), or,
  when there is no probability, the reason (``expansion.reason``, e.g. ``no_haematoma_detected``);
* each NCCT marker read from the image (present yes/no; its measurement in HU, mL, a count or unitless) and the
  BAT score with whether it includes the onset time, when the result has them.

The model name and version are the group's algorithm identification (TID 4019) and the SR's manufacturer model
name and software versions. Codes this service defines use the private coding scheme :data:`SCHEME` (``99ICH``).

A series refused by the quality gate gets :func:`build_refusal_sr`: the same document frame with one group that
states the refusal code (the code is the coded value, its words the meaning).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from app.outputs.result_uids import ResultUids, derived_uid
from app.outputs.seg import MANUFACTURER, with_type2_attributes

SCHEME = "99ICH"
SR_ROLE = "sr"
SR_SERIES_NUMBER = 9902
SEGMENT_NUMBER = 1

PROCEDURE = hd.sr.CodedConcept("30799-1", "LN", "CT Head WO contrast")
FINDING = hd.sr.CodedConcept("274100004", "SCT", "Cerebral hemorrhage")
UNIT_ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
UNIT_ONE = hd.sr.CodedConcept("1", "UCUM", "no units")
ABC2_METHOD = hd.sr.CodedConcept("ABC2", SCHEME, "ABC/2")
EXPANSION_PROBABILITY = hd.sr.CodedConcept("EXP-PROB", SCHEME, "Probability of haematoma expansion")
DECISION_THRESHOLD = hd.sr.CodedConcept("EXP-THRESHOLD", SCHEME, "Haematoma expansion decision threshold")
EXPANSION_PREDICTED = hd.sr.CodedConcept("EXP-PREDICTED", SCHEME, "Haematoma expansion predicted")
NOT_ASSESSED = hd.sr.CodedConcept("EXP-NOT-ASSESSED", SCHEME, "Haematoma expansion not assessed")
HAEMATOMA_DETECTED = hd.sr.CodedConcept("HAEM-DETECTED", SCHEME, "Haematoma detected")
ANALYSIS_REFUSED = hd.sr.CodedConcept("REFUSED", SCHEME, "Analysis refused")

ReportItem = hd.sr.Measurement | hd.sr.QualitativeEvaluation
ItemBuilder = Callable[[Mapping[str, Any], hd.sr.AlgorithmIdentification], Iterable[ReportItem]]


def _yes_no(value: bool) -> Any:
    return codes.SCT.Yes if value else codes.SCT.No


def reason_concept(code: str) -> hd.sr.CodedConcept:
    """A coded value for a machine-readable reason or refusal code (``no_haematoma_detected``): the code itself,
    its words (underscores as spaces, first letter upper case) as the meaning."""
    words = code.replace("_", " ").strip() or code
    return hd.sr.CodedConcept(code, SCHEME, (words[:1].upper() + words[1:])[:64])


def haematoma_items(document: Mapping[str, Any], algorithm: hd.sr.AlgorithmIdentification) -> list[ReportItem]:
    """Volume of the mask and ABC/2 (mL), and whether a haematoma was detected."""
    h = document["haematoma"]
    return [
        hd.sr.Measurement(name=codes.SCT.Volume, value=float(h["volume_ml"]), unit=UNIT_ML, algorithm_id=algorithm),
        hd.sr.Measurement(name=codes.SCT.Volume, value=float(h["abc2_volume_ml"]), unit=UNIT_ML, method=ABC2_METHOD,
                          algorithm_id=algorithm),
        hd.sr.QualitativeEvaluation(HAEMATOMA_DETECTED, _yes_no(bool(h["detected"]))),
    ]


def expansion_items(document: Mapping[str, Any], algorithm: hd.sr.AlgorithmIdentification) -> list[ReportItem]:
    """Expansion probability (0-1), threshold and decision; the reason instead when there is no probability."""
    e = document["expansion"]
    if e.get("probability") is None:
        return [hd.sr.QualitativeEvaluation(NOT_ASSESSED, reason_concept(str(e.get("reason") or "unknown")))]
    return [
        hd.sr.Measurement(name=EXPANSION_PROBABILITY, value=float(e["probability"]), unit=UNIT_ONE,
                          algorithm_id=algorithm),
        hd.sr.Measurement(name=DECISION_THRESHOLD, value=float(e["threshold"]), unit=UNIT_ONE),
        hd.sr.QualitativeEvaluation(EXPANSION_PREDICTED, _yes_no(bool(e["predicted"]))),
    ]


MARKER_UNITS = {"HU": hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit"), "mL": UNIT_ML,
                "count": hd.sr.CodedConcept("{count}", "UCUM", "count"), "1": UNIT_ONE}
BAT_SCORE = hd.sr.CodedConcept("BAT-SCORE", SCHEME, "BAT score")
BAT_COMPLETE = hd.sr.CodedConcept("BAT-COMPLETE", SCHEME, "BAT score includes the onset time")


def marker_concept(name: str, suffix: str = "") -> hd.sr.CodedConcept:
    """The coded name of an NCCT marker (``blend``) or of its measurement (``suffix`` ``"-VALUE"``)."""
    words = name.replace("_", " ")
    meaning = f"NCCT marker {words}" + (" measurement" if suffix else "")
    return hd.sr.CodedConcept(f"NCCT-{name.upper().replace('_', '-')}{suffix}"[:16], SCHEME, meaning[:64])


def marker_items(document: Mapping[str, Any], algorithm: hd.sr.AlgorithmIdentification) -> list[ReportItem]:
    """Each NCCT marker read from the image (present yes/no, and the measurement behind it with its unit) and the
    BAT score; nothing when the result has no markers (no haematoma detected, or weights without markers)."""
    markers = document.get("ncct_markers") or {}
    items: list[ReportItem] = []
    for name, finding in markers.items():
        items.append(hd.sr.QualitativeEvaluation(marker_concept(name), _yes_no(bool(finding["present"]))))
        items.append(hd.sr.Measurement(name=marker_concept(name, "-VALUE"), value=float(finding["value"]),
                                       unit=MARKER_UNITS.get(str(finding["unit"]), UNIT_ONE),
                                       algorithm_id=algorithm))
    bat = document.get("bat")
    if bat is not None:
        items.append(hd.sr.Measurement(name=BAT_SCORE, value=float(bat["score"]), unit=UNIT_ONE,
                                       algorithm_id=algorithm))
        items.append(hd.sr.QualitativeEvaluation(BAT_COMPLETE, _yes_no(bool(bat["complete"]))))
    return items


# Append a builder here to report a further finding of the result document.
REPORT_ITEM_BUILDERS: tuple[ItemBuilder, ...] = (haematoma_items, expansion_items, marker_items)


def _algorithm(name: str, version: str) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=name, version=version)


def _observation_context(algorithm_name: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("ich-expansion-device", algorithm_name),
        name=algorithm_name[:64], manufacturer_name=MANUFACTURER, model_name=algorithm_name[:64])
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.cid270.Device,
                                                      observer_identifying_attributes=device))


def object_reference(study_uid: str, series_uid: str, sop_class_uid: str, sop_instance_uid: str) -> pydicom.Dataset:
    """The four UIDs of an instance the report references (evidence for an object not at hand, e.g. the SEG)."""
    ref = pydicom.Dataset()
    ref.StudyInstanceUID, ref.SeriesInstanceUID = study_uid, series_uid
    ref.SOPClassUID, ref.SOPInstanceUID = sop_class_uid, sop_instance_uid
    return ref


def _document(source_headers: Sequence[pydicom.Dataset], groups: Sequence[Any], uids: ResultUids,
              description: str, extra_evidence: Sequence[pydicom.Dataset] = ()) -> pydicom.Dataset:
    if not source_headers:
        raise ValueError("an SR needs the source instances it reports on")
    sources = list(source_headers)
    sources[0] = with_type2_attributes(sources[0])
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(uids.algorithm_name),
        procedure_reported=PROCEDURE,
        imaging_measurements=list(groups),
        referenced_images=sources[:1],  # one library entry describes the series; evidence lists every instance
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *extra_evidence],
        content=report,
        series_instance_uid=uids.series(SR_ROLE),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.instance(SR_ROLE),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = description
    sr.ManufacturerModelName = uids.algorithm_name[:64]
    sr.SoftwareVersions = uids.algorithm_version[:64]
    return sr


def build_sr(
    source_headers: Sequence[pydicom.Dataset],
    document: Mapping[str, Any],
    uids: ResultUids,
    seg_series_instance_uid: str,
    seg_sop_instance_uid: str,
    *,
    item_builders: Sequence[ItemBuilder] = REPORT_ITEM_BUILDERS,
) -> pydicom.Dataset:
    """The TID 1500 measurement report of ``document`` (the result document as JSON: ``haematoma``,
    ``expansion``, ...) about ``source_headers`` (pixel-free, volume order), referencing segment 1 of the SEG
    ``seg_sop_instance_uid`` in series ``seg_series_instance_uid`` (the SEG of the series of ``source_headers``)."""
    algorithm = _algorithm(uids.algorithm_name, uids.algorithm_version)
    items = [item for builder in item_builders for item in builder(document, algorithm)]
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=pydicom.uid.SegmentationStorage,
        sop_instance_uid=seg_sop_instance_uid,
        segment_number=SEGMENT_NUMBER,
        source_series=hd.sr.SourceSeriesForSegmentation(str(source_headers[0].SeriesInstanceUID)),
    )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.uid(SR_ROLE, "tracking"), identifier="Haematoma"),
        referenced_segment=segment,
        finding_type=FINDING,
        algorithm_id=algorithm,
        measurements=[i for i in items if isinstance(i, hd.sr.Measurement)],
        qualitative_evaluations=[i for i in items if isinstance(i, hd.sr.QualitativeEvaluation)],
    )
    seg = object_reference(str(source_headers[0].StudyInstanceUID), seg_series_instance_uid,
                           pydicom.uid.SegmentationStorage, seg_sop_instance_uid)
    return _document(source_headers, [group], uids, "ICH haematoma measurements (research use)", [seg])


def build_refusal_sr(source_headers: Sequence[pydicom.Dataset], code: str, uids: ResultUids) -> pydicom.Dataset:
    """An SR stating that the series of ``source_headers`` was refused with ``code`` (a refusal code of
    :class:`app.errors.RefusalCode`) and not analysed."""
    algorithm = _algorithm(uids.algorithm_name, uids.algorithm_version)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.uid(SR_ROLE, "tracking"), identifier="Analysis"),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(ANALYSIS_REFUSED, reason_concept(code))],
    )
    return _document(source_headers, [group], uids, f"ICH analysis refused: {code}"[:64])


def sr_bytes(sr: pydicom.Dataset) -> bytes:
    """Serialise an SR as a DICOM Part-10 file."""
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
