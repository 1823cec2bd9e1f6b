"""Group candidate CT instances into series and choose the one to analyse.

Grouping
    Instances are grouped by SeriesInstanceUID, and a series is split when its ImageOrientationPatient (rounded to
    1e-3) or its matrix (Rows x Columns) differ between instances: each part is a separate candidate. This isolates
    scouts stored in the same series as the axial images, and reformats that share a series UID.

Candidate checks (a candidate that fails one is listed in ``series_found`` with ``usable: false`` and the reason)
    - every instance has ImagePositionPatient, ImageOrientationPatient and PixelSpacing (``inconsistent_geometry``);
    - the slice normal (row x column direction) lies within 45 degrees of the patient S-I axis (``not_axial``):
      this also rejects localizers that do not say LOCALIZER in ImageType, since their orientation is orthogonal;
    - at least ``min_slices`` distinct instances (``too_few_slices``).

Selection rules, applied in this order among usable candidates (the key is reported as ``score``):
    1. ImageType ORIGINAL and PRIMARY (acquired images, not derived reformats);
    2. ImageType contains AXIAL;
    3. most slices (complete coverage);
    4. SliceThickness closest to 5 mm (the thickness the model was developed on).
    When the two best candidates have the same key, the choice is refused with ``ambiguous_series`` listing them,
    unless the caller names a SeriesInstanceUID (``series_instance_uid``; unknown -> ``series_not_found``).
    When no candidate is usable, the refusal is the reason of the largest candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from app.errors import IngestionError, RefusalCode
from app.ingestion.attributes import get_int, get_text, try_float, try_floats, try_text
from app.ingestion.reading import Instance, image_type
from app.ingestion.types import SeriesSummary

TARGET_THICKNESS_MM = 5.0
MAX_AXIAL_ANGLE_DEG = 45.0
MAX_PIXEL_SPACING_MM = 100.0  # a pixel (or voxel) larger than this is a broken header, not an image


@dataclass
class Candidate:
    """One (split) series of single-frame CT images."""

    series_instance_uid: str
    instances: list[Instance]
    orientation: tuple[float, ...] | None
    rows: int
    columns: int
    reason: str | None = None
    score: tuple[float, float, float, float] | None = None
    summary: SeriesSummary | None = field(default=None, repr=False)

    @property
    def n_distinct(self) -> int:
        return len({sop_instance_uid(i) or str(id(i)) for i in self.instances})


def sop_instance_uid(inst: Instance) -> str | None:
    return get_text(inst.ds, "SOPInstanceUID", RefusalCode.INVALID_DICOM)


def orientation_of(inst: Instance) -> tuple[float, ...] | None:
    """ImageOrientationPatient (6 direction cosines), or None when missing or unreadable."""
    return try_floats(inst.ds, "ImageOrientationPatient", 6, max_abs=1.5)


def position_of(inst: Instance) -> tuple[float, ...] | None:
    """ImagePositionPatient (LPS, mm), or None when missing, unreadable or beyond 100 m."""
    return try_floats(inst.ds, "ImagePositionPatient", 3, max_abs=1e5)


def pixel_spacing_of(inst: Instance) -> tuple[float, ...] | None:
    """PixelSpacing (row spacing, column spacing) in mm, or None when missing, unreadable or not in (0, 100]."""
    spacing = try_floats(inst.ds, "PixelSpacing", 2, max_abs=MAX_PIXEL_SPACING_MM)
    if spacing is None or not spacing_plausible(spacing):
        return None
    return spacing


def spacing_plausible(spacing_mm: tuple[float, ...] | list[float]) -> bool:
    """Every spacing (mm) is finite and within (0, ``MAX_PIXEL_SPACING_MM``]."""
    return all(math.isfinite(v) and 0 < v <= MAX_PIXEL_SPACING_MM for v in spacing_mm)


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit normal (row direction x column direction) in LPS."""
    n = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0 else n


def orthonormal(orientation: tuple[float, ...] | None, tolerance: float = 1e-2) -> bool:
    """Row and column direction cosines are unit vectors and orthogonal (within ``tolerance``)."""
    if orientation is None:
        return False
    r, c = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    return (abs(float(np.linalg.norm(r)) - 1) < tolerance and abs(float(np.linalg.norm(c)) - 1) < tolerance
            and abs(float(r @ c)) < tolerance)


def is_axial(orientation: tuple[float, ...]) -> bool:
    """The slice normal of ``orientation`` (row and column direction cosines, LPS) lies within
    ``MAX_AXIAL_ANGLE_DEG`` of the patient S-I axis."""
    return abs(float(slice_normal(orientation)[2])) >= math.cos(math.radians(MAX_AXIAL_ANGLE_DEG))


def _thickness(instances: list[Instance]) -> float | None:
    values = [v for v in (try_float(i.ds, "SliceThickness", max_abs=1e3) for i in instances) if v is not None]
    return float(np.median(values)) if values else None


def group_candidates(instances: list[Instance]) -> list[Candidate]:
    """Group CT image instances into candidates (see module docstring), in a stable order."""
    groups: dict[tuple, list[Instance]] = {}
    for inst in instances:
        ori = orientation_of(inst)
        key = (
            get_text(inst.ds, "SeriesInstanceUID", RefusalCode.INVALID_DICOM, "") or "",
            tuple(round(v, 3) for v in ori) if ori else None,
            get_int(inst.ds, "Rows", RefusalCode.CORRUPT_PIXEL_DATA, 0) or 0,
            get_int(inst.ds, "Columns", RefusalCode.CORRUPT_PIXEL_DATA, 0) or 0,
        )
        groups.setdefault(key, []).append(inst)
    out = [
        Candidate(series_instance_uid=k[0], instances=v, orientation=k[1], rows=k[2], columns=k[3])
        for k, v in groups.items()
    ]
    out.sort(key=lambda c: (c.series_instance_uid, -len(c.instances)))
    return out


def evaluate(candidate: Candidate, min_slices: int) -> None:
    """Fill ``reason``, ``score`` and ``summary`` of a candidate."""
    insts = candidate.instances
    reason: str | None = None
    # orientation first: a sagittal or coronal reformat is "not axial" whatever its positions look like
    if not orthonormal(candidate.orientation):
        reason = str(RefusalCode.INCONSISTENT_GEOMETRY)
    elif not is_axial(candidate.orientation):  # type: ignore[arg-type]
        reason = str(RefusalCode.NOT_AXIAL)
    elif not all(position_of(i) is not None and pixel_spacing_of(i) is not None for i in insts):
        reason = str(RefusalCode.INCONSISTENT_GEOMETRY)
    elif candidate.n_distinct < min_slices:
        reason = str(RefusalCode.TOO_FEW_SLICES)
    candidate.reason = reason
    types = image_type(insts[0])
    thickness = _thickness(insts)
    if reason is None:
        candidate.score = (
            float("ORIGINAL" in types and "PRIMARY" in types),
            float("AXIAL" in types),
            float(candidate.n_distinct),
            -round(abs(thickness - TARGET_THICKNESS_MM), 2) if thickness is not None else -1e6,
        )
    first = insts[0].ds
    candidate.summary = SeriesSummary(
        series_instance_uid=candidate.series_instance_uid,
        modality=try_text(first, "Modality"),
        sop_class_uid=insts[0].sop_class_uid or None,
        image_type=types,
        series_description=try_text(first, "SeriesDescription"),
        n_instances=candidate.n_distinct,
        slice_thickness_mm=thickness,
        rows=candidate.rows or None,
        columns=candidate.columns or None,
        usable=reason is None,
        reason=reason,
        score=list(candidate.score) if candidate.score else None,
    )


_REASON_MESSAGES = {
    RefusalCode.NOT_AXIAL: "The CT series is not an axial acquisition (slice normal more than 45 degrees from head-feet).",
    RefusalCode.TOO_FEW_SLICES: "The CT series has fewer slices than required.",
    RefusalCode.INCONSISTENT_GEOMETRY: "The CT series lacks a valid image position, orientation or pixel spacing.",
}


def _describe(c: Candidate) -> dict:
    s = c.summary
    assert s is not None
    return {
        "series_instance_uid": s.series_instance_uid,
        "series_description": s.series_description,
        "n_slices": s.n_instances,
        "slice_thickness_mm": s.slice_thickness_mm,
    }


def choose(candidates: list[Candidate], series_instance_uid: str | None, min_slices: int) -> Candidate:
    """Apply the selection rules of the module docstring; raise a refusal when no single candidate wins."""
    for c in candidates:
        if c.summary is None:
            evaluate(c, min_slices)
    pool = candidates
    if series_instance_uid is not None:
        pool = [c for c in candidates if c.series_instance_uid == series_instance_uid]
        if not pool:
            raise IngestionError(
                RefusalCode.SERIES_NOT_FOUND,
                "The requested series is not among the CT image series of the input.",
                {"available": [c.series_instance_uid for c in candidates]},
            )
    usable = [c for c in pool if c.reason is None]
    if not usable:
        worst = max(pool, key=lambda c: len(c.instances))
        code = RefusalCode(worst.reason)
        details = _describe(worst)
        if code is RefusalCode.TOO_FEW_SLICES:
            details["min_slices"] = min_slices
        raise IngestionError(code, _REASON_MESSAGES.get(code, "The CT series cannot be used."), details)
    usable.sort(key=lambda c: c.score, reverse=True)  # type: ignore[arg-type, return-value]
    if len(usable) > 1 and usable[0].score == usable[1].score:
        tied = [c for c in usable if c.score == usable[0].score]
        raise IngestionError(
            RefusalCode.AMBIGUOUS_SERIES,
            f"{len(tied)} CT series are equally suitable; name the one to analyse (series_instance_uid).",
            {"candidates": [_describe(c) for c in tied]},
        )
    return usable[0]
