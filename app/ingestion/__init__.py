"""DICOM ingestion with a quality gate: files / folders / ZIPs / bytes -> one axial CT volume in HU (LPS).

Pipeline (each step in its own module):

1. :mod:`~app.ingestion.sources` expands the inputs into in-memory members (ZIP limits, nesting) and
   :mod:`~app.ingestion.reading` recognises DICOM by content and parses each member once.
2. Objects that are not single-frame axial CT images are skipped and counted per reason (``skipped_objects``
   warning): directories/index files, objects without pixel data, other modalities, secondary captures, other SOP
   classes, enhanced multi-frame CT (not supported), localizers, non-HU derived maps.
3. :mod:`~app.ingestion.series` groups the CT images into series (split by orientation and matrix) and chooses
   one by the documented rules (refusing ``ambiguous_series`` on a tie unless the caller names one).
4. The chosen series' pixels are decoded in a thread pool and converted to HU per instance.
5. :mod:`~app.ingestion.geometry` orders slices on the normal, removes duplicates, corrects tilt / uneven spacing
   and builds the SimpleITK volume.

Refusals, in order of precedence: ``empty_input`` (nothing given), ``archive_invalid`` / ``archive_limit_exceeded``,
``not_dicom`` (no member is DICOM), ``no_image_series`` (DICOM, but no image object), ``not_ct`` (images, but
none of modality CT), ``unsupported_sop_class`` (only enhanced multi-frame CT), ``no_image_series`` (only CT
objects that are skipped, e.g. scouts and screen captures), then the series-level codes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.errors import IngestionError, QualityWarning, RefusalCode, WarningCode
from app.ingestion.geometry import build_volume
from app.ingestion.reading import (
    Instance,
    classify,
    decode_all,
    is_lossy,
    parse_member,
    pixel_free_header,
    pixel_hash,
    transfer_syntax_name,
)
from app.ingestion.series import Candidate, choose, evaluate, group_candidates
from app.ingestion.sources import ArchiveLimits, expand_inputs
from app.ingestion.types import IngestedSeries, SeriesSummary, SourceSlice

__all__ = [
    "ArchiveLimits",
    "IngestedSeries",
    "SeriesSummary",
    "SourceSlice",
    "inspect_inputs",
    "load_series",
]

InputItem = str | os.PathLike[str] | bytes


@dataclass
class _Run:
    """State of one ingestion call, kept so that ``inspect`` can report what was found even on refusal."""

    n_members: int = 0
    n_dicom: int = 0
    skipped: Counter = field(default_factory=Counter)
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None

    def series_found(self) -> list[SeriesSummary]:
        return [c.summary for c in self.candidates if c.summary is not None]


def _parse_all(inputs: Sequence[InputItem], limits: ArchiveLimits | None, run: _Run) -> list[Instance]:
    members = expand_inputs(inputs, limits)
    run.n_members = len(members)
    parsed: list[Instance] = []
    for member in members:
        inst = parse_member(member)
        if inst is None:
            run.skipped["not_dicom"] += 1
            continue
        parsed.append(inst)
    del members
    run.n_dicom = len(parsed)
    if not parsed:
        raise IngestionError(
            RefusalCode.NOT_DICOM, "None of the input files is DICOM.", {"n_files": run.n_members}
        )
    ct: list[Instance] = []
    for inst in parsed:
        inst.skip_reason = classify(inst)
        if inst.skip_reason is None:
            ct.append(inst)
        else:
            run.skipped[inst.skip_reason] += 1
    if not ct:
        counts = dict(run.skipped)
        if not any(r not in {"directory", "no_pixel_data", "not_dicom"} for r in counts):
            raise IngestionError(RefusalCode.NO_IMAGE_SERIES, "The DICOM input holds no images.", {"skipped": counts})
        has_ct_objects = any(str(i.ds.get("Modality", "")).upper() == "CT" for i in parsed)
        if counts.get("non_ct_modality") and not has_ct_objects:
            modalities = sorted({str(i.ds.get("Modality", "?")) for i in parsed if i.skip_reason == "non_ct_modality"})
            raise IngestionError(
                RefusalCode.NOT_CT,
                f"The input holds no CT images (modalities found: {', '.join(modalities)}).",
                {"modalities": modalities},
            )
        if counts.get("enhanced_multiframe"):
            raise IngestionError(
                RefusalCode.UNSUPPORTED_SOP_CLASS,
                "Only enhanced multi-frame CT objects were found; export the study as single-frame CT images.",
                {"skipped": counts},
            )
        raise IngestionError(
            RefusalCode.NO_IMAGE_SERIES,
            "The input holds no axial CT image series (only scouts, screen captures or other objects).",
            {"skipped": counts},
        )
    return ct


def _dedupe_sop_uids(instances: list[Instance]) -> tuple[list[Instance], int]:
    """Drop byte-identical copies of an instance; refuse two different objects with one SOPInstanceUID."""
    by_uid: dict[str, Instance] = {}
    kept: list[Instance] = []
    removed = 0
    for inst in instances:
        inst.pixel_hash = pixel_hash(inst)
        uid = str(inst.ds.get("SOPInstanceUID", ""))
        other = by_uid.get(uid) if uid else None
        if other is None:
            if uid:
                by_uid[uid] = inst
            kept.append(inst)
            continue
        same_place = [str(v) for v in other.ds.get("ImagePositionPatient", [])] == [
            str(v) for v in inst.ds.get("ImagePositionPatient", [])
        ]
        if other.pixel_hash != inst.pixel_hash or not same_place:
            raise IngestionError(
                RefusalCode.CONFLICTING_DUPLICATES,
                "Two different images carry the same SOPInstanceUID.",
                {"n_instances": len(instances)},
            )
        removed += 1
    return kept, removed


def _ingest(
    inputs: Sequence[InputItem],
    run: _Run,
    *,
    series_instance_uid: str | None,
    limits: ArchiveLimits | None,
    min_slices: int,
) -> IngestedSeries:
    ct = _parse_all(inputs, limits, run)
    run.candidates = group_candidates(ct)
    for cand in run.candidates:
        evaluate(cand, min_slices)
    if series_instance_uid is not None and not any(
        c.series_instance_uid == series_instance_uid for c in run.candidates
    ):
        raise IngestionError(
            RefusalCode.SERIES_NOT_FOUND,
            "The requested series is not among the CT image series of the input.",
            {"available": sorted({c.series_instance_uid for c in run.candidates})},
        )
    chosen = choose(run.candidates, series_instance_uid, min_slices)
    run.chosen = chosen

    warnings: list[QualityWarning] = []
    instances, removed = _dedupe_sop_uids(chosen.instances)
    decode_all(instances)
    thickness = chosen.summary.slice_thickness_mm if chosen.summary else None
    volume = build_volume(instances, min_slices, default_spacing_mm=thickness)
    removed_total = removed + sum(
        w.details.get("count", 0) for w in volume.warnings if w.code is WarningCode.DUPLICATES_REMOVED
    )
    warnings.extend(w for w in volume.warnings if w.code is not WarningCode.DUPLICATES_REMOVED)
    if removed_total:
        warnings.insert(0, QualityWarning(
            WarningCode.DUPLICATES_REMOVED,
            f"{removed_total} byte-identical duplicate image(s) were ignored.",
            {"count": removed_total},
        ))
    if run.skipped:
        n = sum(run.skipped.values())
        warnings.append(QualityWarning(
            WarningCode.SKIPPED_OBJECTS,
            f"{n} object(s) that are not axial CT images were skipped.",
            {"counts": dict(sorted(run.skipped.items()))},
        ))
    others = [c for c in run.candidates if c is not chosen]
    if others and series_instance_uid is None:
        warnings.append(QualityWarning(
            WarningCode.SERIES_CHOSEN_AUTOMATICALLY,
            f"{len(run.candidates)} CT series were found; the best one by the selection rules was analysed.",
            {"n_series": len(run.candidates), "not_chosen": [c.series_instance_uid for c in others]},
        ))
    syntaxes = sorted({i.transfer_syntax for i in volume.instances})
    lossy = sorted({i.transfer_syntax for i in volume.instances if is_lossy(i)})
    if lossy:
        warnings.append(QualityWarning(
            WarningCode.LOSSY_COMPRESSION,
            "The images were stored with lossy compression: " + ", ".join(transfer_syntax_name(t) for t in lossy),
            {"transfer_syntaxes": lossy},
        ))
    headers = [pixel_free_header(i.ds) for i in volume.instances]
    for inst in instances:  # release encoded and decoded pixels; the volume holds its own copy
        inst.hu = None
    first = volume.instances[0].ds
    return IngestedSeries(
        image=volume.image,
        slices=volume.slices,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=chosen.series_instance_uid,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID")) if first.get("FrameOfReferenceUID") else None,
        resampled=volume.resampled,
        warnings=warnings,
        series_found=run.series_found(),
        transfer_syntaxes=syntaxes,
        source_headers=headers,
    )


def load_series(
    inputs: Sequence[InputItem],
    *,
    series_instance_uid: str | None = None,
    limits: ArchiveLimits | None = None,
    min_slices: int = 3,
) -> IngestedSeries:
    """Ingest DICOM files, folders (recursive), ZIP archives or raw bytes and return the chosen CT series.

    Raises :class:`app.errors.IngestionError` (with a stable ``code``) when the input cannot be analysed.
    """
    if isinstance(inputs, str | bytes | os.PathLike):
        inputs = [inputs]  # type: ignore[list-item]
    return _ingest(inputs, _Run(), series_instance_uid=series_instance_uid, limits=limits, min_slices=min_slices)


def _geometry_report(series: IngestedSeries) -> dict[str, Any]:
    img = series.image
    return {
        "size_xyz": list(img.GetSize()),
        "spacing_xyz_mm": [round(v, 6) for v in img.GetSpacing()],
        "origin_lps_mm": [round(v, 4) for v in img.GetOrigin()],
        "direction": [round(v, 6) for v in img.GetDirection()],
        "resampled": series.resampled,
        "n_source_slices": len(series.slices),
    }


def inspect_inputs(
    inputs: Sequence[InputItem],
    *,
    series_instance_uid: str | None = None,
    limits: ArchiveLimits | None = None,
    min_slices: int = 3,
) -> dict[str, Any]:
    """Run the full ingestion and return a JSON-able report (no patient identifiers).

    Keys: ``usable`` (bool), ``chosen_series`` (UID or None), ``series_found`` (summaries), ``objects``
    (counts of members, DICOM objects and skipped objects per reason), ``checks`` (volume geometry of the
    chosen series), ``warnings`` and ``refusal`` ({code, message, details} or None).
    """
    if isinstance(inputs, str | bytes | os.PathLike):
        inputs = [inputs]  # type: ignore[list-item]
    run = _Run()
    report: dict[str, Any] = {"usable": False, "chosen_series": None, "refusal": None, "warnings": [], "checks": {}}
    try:
        series = _ingest(inputs, run, series_instance_uid=series_instance_uid, limits=limits, min_slices=min_slices)
    except IngestionError as exc:
        report["refusal"] = exc.as_dict()
        if run.chosen is not None:
            report["chosen_series"] = run.chosen.series_instance_uid
    else:
        report["usable"] = True
        report["chosen_series"] = series.series_instance_uid
        report["warnings"] = [w.as_dict() for w in series.warnings]
        report["checks"] = _geometry_report(series)
        report["transfer_syntaxes"] = series.transfer_syntaxes
    report["series_found"] = [s.as_dict() for s in run.series_found()]
    report["objects"] = {
        "n_files": run.n_members,
        "n_dicom": run.n_dicom,
        "skipped": dict(sorted(run.skipped.items())),
    }
    return report
