"""Refusal and warning codes shared by ingestion, preprocessing, the CLI and the HTTP API.

Every refusal is an :class:`IngestionError` carrying a stable machine-readable :class:`RefusalCode`
and a sentence a person understands. Codes are part of the public API: never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RefusalCode(StrEnum):
    """Why an input cannot be analysed (HTTP 4xx ``code`` field, ``inspect`` exit 2)."""

    NOT_DICOM = "not_dicom"  # nothing in the input is DICOM or NIfTI (detected by content)
    NO_IMAGE_SERIES = "no_image_series"  # DICOM present, but no usable image series
    NOT_CT = "not_ct"  # image series present, none of modality CT
    AMBIGUOUS_SERIES = "ambiguous_series"  # two or more equally good candidates; caller must name one
    SERIES_NOT_FOUND = "series_not_found"  # the caller named a SeriesInstanceUID that is not in the input
    TOO_FEW_SLICES = "too_few_slices"
    MISSING_SLICES = "missing_slices"  # gap > 2x median slice spacing
    CONFLICTING_DUPLICATES = "conflicting_duplicates"  # same position / SOP UID, different pixels
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    CORRUPT_PIXEL_DATA = "corrupt_pixel_data"
    NOT_AXIAL = "not_axial"
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"  # missing/contradictory IPP, IOP, spacing, matrix
    ARCHIVE_INVALID = "archive_invalid"  # unreadable ZIP
    ARCHIVE_LIMIT_EXCEEDED = "archive_limit_exceeded"  # zip bomb, too many members, too large
    EMPTY_INPUT = "empty_input"
    BRAIN_NOT_FOUND = "brain_not_found"  # preprocessing: skull stripping found no brain
    UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"  # only enhanced multi-frame CT (not supported) was found
    INVALID_DICOM = "invalid_dicom"  # a DICOM object whose header cannot be parsed (damaged element, wrong VR)
    INVALID_NIFTI = "invalid_nifti"  # a NIfTI file (recognised by content) whose header or data is damaged/truncated
    UNSUPPORTED_VOLUME = "unsupported_volume"  # NIfTI that is not one scalar 3D volume (4D series, RGB, NIfTI-2)
    NOT_HOUNSFIELD_UNITS = "not_hounsfield_units"  # a volume whose intensities are not CT HU (MR, normalised)
    MULTIPLE_VOLUMES = "multiple_volumes"  # several NIfTI volumes, or NIfTI and DICOM, in one input


class WarningCode(StrEnum):
    """Accepted, but reported in ``input.warnings``."""

    GANTRY_TILT_CORRECTED = "gantry_tilt_corrected"
    NON_UNIFORM_SPACING_RESAMPLED = "non_uniform_spacing_resampled"
    DUPLICATES_REMOVED = "duplicates_removed"
    SKIPPED_OBJECTS = "skipped_objects"
    LOSSY_COMPRESSION = "lossy_compression"
    SERIES_CHOSEN_AUTOMATICALLY = "series_chosen_automatically"
    FIELD_OF_VIEW_TRUNCATED = "field_of_view_truncated"
    NO_DICOM_SOURCE = "no_dicom_source"  # NIfTI input: outputs that reference source instances (DICOM SEG) are not made
    # result-level: the haematoma lies probably below the tentorium (centroid heuristic, no atlas); the
    # paper's population excluded infratentorial haematomas
    INFRATENTORIAL_HAEMATOMA = "infratentorial_haematoma"


class ResultReason(StrEnum):
    """Why a prediction field is null (``expansion.reason``)."""

    NO_HAEMATOMA_DETECTED = "no_haematoma_detected"  # the detection rule rejected the segmented mask
    # comparisons: the growth rule needs a baseline haematoma (relative growth of nothing is undefined)
    NO_BASELINE_HAEMATOMA = "no_baseline_haematoma"


class ComparisonRefusal(StrEnum):
    """Why two predictions cannot be compared as baseline and follow-up (HTTP 422 ``code``, ``compare`` exit 2)."""

    DIFFERENT_PATIENTS = "different_patients"  # the two studies belong to different patients
    FOLLOWUP_NOT_LATER = "followup_not_later"  # the follow-up was acquired at or before the baseline
    PATIENT_IDENTITY_UNKNOWN = "patient_identity_unknown"  # no patient ID/name in one study (e.g. a NIfTI input)
    ACQUISITION_TIME_UNKNOWN = "acquisition_time_unknown"  # no acquisition/series/study date in one study


class AbstainReason(StrEnum):
    """Why a prediction advises against relying on it (``abstain.reasons``)."""

    MASK_AT_FOV_EDGE = "mask_at_fov_edge"  # the haematoma mask reaches the edge of the analysed field of view
    INTERVAL_TOO_WIDE = "interval_too_wide"  # the test-time-augmentation interval is wider than the limit
    INFRATENTORIAL = "infratentorial"  # the haematoma lies probably below the tentorium (outside the population)
    IMAGE_STATISTICS_OUT_OF_RANGE = "image_statistics_out_of_range"  # brain HU statistics outside the training range


@dataclass(frozen=True)
class QualityWarning:
    code: WarningCode
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message, "details": self.details}


class ComparisonError(Exception):
    """A refused comparison. ``message`` never contains patient identifiers or dates."""

    def __init__(self, code: ComparisonRefusal, message: str):
        super().__init__(message)
        self.code = ComparisonRefusal(code)
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message}


class IngestionError(Exception):
    """A refusal: the input cannot be analysed. ``message`` must never contain patient identifiers."""

    def __init__(self, code: RefusalCode, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = RefusalCode(code)
        self.message = message
        self.details = details or {}

    def as_dict(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message, "details": self.details}
