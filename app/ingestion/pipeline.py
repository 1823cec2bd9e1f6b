"""The ingestion pipeline: files / folders / ZIPs / bytes -> one axial CT volume in HU (LPS, mm; arrays z-y-x).

An input whose members include a NIfTI file (recognised by content, :mod:`~app.ingestion.volume_file`) is read
as that volume (``source_kind="nifti"``, no source instances); it must be the only image in the input (a second
volume or any DICOM object alongside it: ``multiple_volumes``; other files are skipped and counted). Everything
else is DICOM:

Pipeline (each step in its own module):

1. :mod:`~app.ingestion.sources` expands the inputs into in-memory members (ZIP limits, nesting) and
   :mod:`~app.ingestion.reading` recognises DICOM by content and parses each member once.
2. Objects that are not single-frame axial CT images are skipped and counted per reason (``skipped_objects``
   warning): directories/index files, objects without pixel data, other modalities, secondary captures, other SOP
   classes, enhanced multi-frame CT (not supported), localizers, non-HU derived maps.
3. :mod:`~app.ingestion.series` groups the CT images into series (split by orientation and matrix) and chooses
   one by the documented rules (refusing ``ambiguous_series`` on a tie unless the caller names one).
4. :mod:`~app.ingestion.duplicates` drops copies of an instance (same SOPInstanceUID), then the chosen series'
   pixels are decoded in a thread pool and converted to HU per instance.
5. :mod:`~app.ingestion.geometry` orders slices on the normal, drops resends at one position (the second rule of
   the same :class:`~app.ingestion.duplicates.Duplicates` tally, which reports both in one warning), corrects
   tilt / uneven spacing and builds the SimpleITK volume.

Refusals, in order of precedence: ``empty_input`` (nothing given), ``archive_invalid`` / ``archive_limit_exceeded``,
``not_dicom`` (no member is DICOM), ``no_image_series`` (DICOM, but no image object), ``not_ct`` (images, but
none of modality CT), ``unsupported_sop_class`` (only enhanced multi-frame CT), ``no_image_series`` (only CT
objects that are skipped, e.g. scouts and screen captures), then the series-level codes.

Untrusted input: every attribute of a client dataset is read through the typed accessors of
:mod:`~app.ingestion.attributes`, which turn parse failures into refusals naming the attribute keyword (never the
value). A parse error that still escapes them is refused where it is caught: ``corrupt_pixel_data`` by the
pixel steps (:func:`~app.ingestion.reading.pixel_hash`, :func:`~app.ingestion.reading.decode_all`,
:func:`~app.ingestion.geometry.build_volume`), ``invalid_dicom`` by the final guard of :func:`load_series` /
:func:`inspect_inputs`, so damaged uploads never surface as unexpected exceptions. pydicom's warnings and log
records, which quote element values, are silenced or redacted (:mod:`~app.ingestion.privacy`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.errors import IngestionError, QualityWarning, RefusalCode, WarningCode
from app.ingestion import privacy, volume_file
from app.ingestion.attributes import PARSE_ERRORS, get_text, try_text, unparsable
from app.ingestion.duplicates import Duplicates
from app.ingestion.geometry import build_volume
from app.ingestion.reading import (
    Instance,
    classify,
    decode_all,
    is_lossy,
    parse_member,
    pixel_free_header,
    transfer_syntax_name,
)
from app.ingestion.series import Candidate, choose, evaluate, group_candidates
from app.ingestion.sources import ArchiveLimits, Member, expand_inputs
from app.ingestion.types import IngestedSeries, SeriesSummary

__all__ = ["InputItem", "inspect_inputs", "load_series"]

InputItem = str | os.PathLike[str] | bytes

privacy.install()


@dataclass
class _Run:
    """State of one ingestion call, kept so that ``inspect`` can report what was found even on refusal."""

    n_members: int = 0
    n_dicom: int = 0
    n_nifti: int = 0
    skipped: Counter = field(default_factory=Counter)
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None

    def series_found(self) -> list[SeriesSummary]:
        return [c.summary for c in self.candidates if c.summary is not None]


def _parse_all(members: list[Member], run: _Run) -> list[Instance]:
    """Parse the DICOM members; empties ``members`` (the parsed datasets hold their own copies)."""
    parsed: list[Instance] = []
    for member in members:
        inst = parse_member(member)
        if inst is None:
            run.skipped["not_dicom"] += 1
            continue
        parsed.append(inst)
    members.clear()
    run.n_dicom = len(parsed)
    if not parsed:
        raise IngestionError(
            RefusalCode.NOT_DICOM, "None of the input files is DICOM or NIfTI.", {"n_files": run.n_members}
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
        has_ct_objects = any((try_text(i.ds, "Modality") or "").upper() == "CT" for i in parsed)
        if counts.get("non_ct_modality") and not has_ct_objects:
            modalities = sorted({try_text(i.ds, "Modality") or "?" for i in parsed if i.skip_reason == "non_ct_modality"})
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


def _ingest_volume(members: list[Member], volumes: list[Member], run: _Run, limits: ArchiveLimits | None,
                   min_slices: int) -> IngestedSeries:
    """The NIfTI branch: exactly one volume and no DICOM object; other members are skipped and counted."""
    run.n_nifti = len(volumes)
    volume_ids = {id(v) for v in volumes}
    run.n_dicom = sum(parse_member(m) is not None for m in members if id(m) not in volume_ids)
    if len(volumes) > 1 or run.n_dicom:
        raise IngestionError(
            RefusalCode.MULTIPLE_VOLUMES,
            f"The input holds {len(volumes)} NIfTI volume(s) and {run.n_dicom} DICOM object(s); send one NIfTI "
            "volume or one DICOM series.",
            {"n_nifti": len(volumes), "n_dicom": run.n_dicom},
        )
    n_other = run.n_members - 1
    if n_other:
        run.skipped["not_an_image"] = n_other
    data = volumes[0].data
    members.clear()
    del volumes
    series = volume_file.load_nifti(data, limits=limits, min_slices=min_slices)
    if n_other:
        series.warnings.append(QualityWarning(
            WarningCode.SKIPPED_OBJECTS,
            f"{n_other} file(s) that are not images were skipped.",
            {"counts": {"not_an_image": n_other}},
        ))
    return series


def _ingest(
    inputs: Sequence[InputItem],
    run: _Run,
    *,
    series_instance_uid: str | None,
    limits: ArchiveLimits | None,
    min_slices: int,
) -> IngestedSeries:
    members = expand_inputs(inputs, limits)
    run.n_members = len(members)
    volumes = [m for m in members if volume_file.is_nifti(m.data)]
    if volumes:  # a NIfTI volume has no series to choose: series_instance_uid does not apply
        return _ingest_volume(members, volumes, run, limits, min_slices)
    ct = _parse_all(members, run)
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

    duplicates = Duplicates()
    instances = duplicates.drop_copies(chosen.instances)
    decode_all(instances)
    thickness = chosen.summary.slice_thickness_mm if chosen.summary else None
    volume = build_volume(instances, min_slices, default_spacing_mm=thickness, duplicates=duplicates)
    duplicates_warning = duplicates.warning()
    warnings: list[QualityWarning] = [duplicates_warning] if duplicates_warning else []
    warnings.extend(volume.warnings)
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
    # the SEG copies patient/study attributes from the first header only: parse it completely, copy the others
    headers = [pixel_free_header(i.ds, parse_all=k == 0) for k, i in enumerate(volume.instances)]
    for inst in instances:  # release encoded and decoded pixels; the volume holds its own copy
        inst.hu = None
    first = volume.instances[0].ds
    return IngestedSeries(
        image=volume.image,
        slices=volume.slices,
        study_instance_uid=get_text(first, "StudyInstanceUID", RefusalCode.INVALID_DICOM, "") or "",
        series_instance_uid=chosen.series_instance_uid,
        frame_of_reference_uid=get_text(first, "FrameOfReferenceUID", RefusalCode.INVALID_DICOM),
        resampled=volume.resampled,
        warnings=warnings,
        series_found=run.series_found(),
        transfer_syntaxes=syntaxes,
        source_headers=headers,
    )


def _guarded_ingest(
    inputs: Sequence[InputItem],
    run: _Run,
    *,
    series_instance_uid: str | None,
    limits: ArchiveLimits | None,
    min_slices: int,
) -> IngestedSeries:
    """:func:`_ingest` with pydicom's value-quoting warnings silenced and a final guard: any parsing error of
    client data that escaped the typed accessors and the pixel steps (which refuse ``corrupt_pixel_data``
    themselves) becomes ``invalid_dicom`` (:func:`~app.ingestion.attributes.unparsable`)."""
    if isinstance(inputs, str | bytes | os.PathLike):
        inputs = [inputs]  # type: ignore[list-item]
    try:
        with privacy.quiet_parsing():
            return _ingest(inputs, run, series_instance_uid=series_instance_uid, limits=limits,
                           min_slices=min_slices)
    except PARSE_ERRORS as exc:
        raise unparsable(exc, RefusalCode.INVALID_DICOM) from None


def load_series(
    inputs: Sequence[InputItem],
    *,
    series_instance_uid: str | None = None,
    limits: ArchiveLimits | None = None,
    min_slices: int = 3,
) -> IngestedSeries:
    """Ingest DICOM files, folders (recursive), ZIP archives or raw bytes and return the chosen CT series, or
    the one NIfTI volume of the input (``source_kind="nifti"``; ``series_instance_uid`` does not apply to it).

    Raises :class:`app.errors.IngestionError` (with a stable ``code``) when the input cannot be analysed.
    """
    return _guarded_ingest(inputs, _Run(), series_instance_uid=series_instance_uid, limits=limits,
                           min_slices=min_slices)


def _geometry_report(series: IngestedSeries) -> dict[str, Any]:
    img = series.image
    return {
        "size_xyz": list(img.GetSize()),
        "spacing_xyz_mm": [round(v, 6) for v in img.GetSpacing()],
        "origin_lps_mm": [round(v, 4) for v in img.GetOrigin()],
        "direction": [round(v, 6) for v in img.GetDirection()],
        "resampled": series.resampled,
        "n_source_slices": len(series.slices),
        "source_kind": series.source_kind,
    }


def inspect_inputs(
    inputs: Sequence[InputItem],
    *,
    series_instance_uid: str | None = None,
    limits: ArchiveLimits | None = None,
    min_slices: int = 3,
) -> dict[str, Any]:
    """Run the full ingestion and return a JSON-able report (no patient identifiers).

    Keys: ``usable`` (bool), ``chosen_series`` (UID or None; ``""`` for a NIfTI volume), ``series_found``
    (summaries), ``objects`` (counts of members, DICOM objects, NIfTI volumes and skipped objects per reason),
    ``checks`` (volume geometry of the chosen series and its ``source_kind``), ``warnings`` and ``refusal``
    ({code, message, details} or None).
    """
    run = _Run()
    report: dict[str, Any] = {"usable": False, "chosen_series": None, "refusal": None, "warnings": [], "checks": {}}
    try:
        series = _guarded_ingest(inputs, run, series_instance_uid=series_instance_uid, limits=limits,
                                 min_slices=min_slices)
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
        "n_nifti": run.n_nifti,
        "skipped": dict(sorted(run.skipped.items())),
    }
    return report
