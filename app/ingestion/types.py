"""Data types produced by ingestion. Coordinate conventions: DICOM patient coordinates (LPS, mm);
numpy arrays from SimpleITK are indexed z-y-x (slice, row, column)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pydicom
import SimpleITK as sitk

from app.errors import QualityWarning


class _ImageBufferOwner:
    """Exposes a SimpleITK image's buffer through ``__array_interface__`` while holding a reference to it."""

    def __init__(self, image: sitk.Image):
        self._image = image
        self._view = sitk.GetArrayViewFromImage(image)
        self.__array_interface__ = self._view.__array_interface__


@dataclass(frozen=True)
class SourceSlice:
    """One original DICOM instance of the analysed series, in volume order.

    ``position`` is ImagePositionPatient (LPS, mm) of the first transmitted pixel; ``row_direction`` and
    ``column_direction`` are the unit vectors of ImageOrientationPatient; ``pixel_spacing`` is
    (row spacing, column spacing) in mm, as in the DICOM PixelSpacing attribute.
    """

    sop_instance_uid: str
    sop_class_uid: str
    position: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int


@dataclass
class SeriesSummary:
    """What ``inspect`` reports for every series found in the input (no patient identifiers)."""

    series_instance_uid: str
    modality: str | None
    sop_class_uid: str | None
    image_type: list[str]
    series_description: str | None
    n_instances: int
    slice_thickness_mm: float | None
    rows: int | None
    columns: int | None
    usable: bool
    reason: str | None = None  # why it is not a candidate (a RefusalCode value or a skip reason)
    score: list[float] | None = None  # selection key, higher is better

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


SourceKind = Literal["dicom", "nifti"]


@dataclass
class IngestedSeries:
    """The chosen series as a volume, with everything needed to map results back onto the original instances.

    ``image`` holds HU as float32 on a regular, orthogonal grid (LPS origin/spacing/direction). When the
    acquisition was neither tilted nor unevenly spaced, ``image`` has exactly one slice per entry of ``slices``
    (slice k of ``image`` is ``slices[k]``) and ``resampled`` is False. Otherwise ``image`` was resampled from
    the acquisition and ``resampled`` is True; masks must then be mapped back per source slice
    (``app.preprocessing.inverse.mask_to_source_slices``).

    ``source_kind`` says where the volume came from: ``"dicom"`` (source instances in ``slices`` and
    ``source_headers``) or ``"nifti"`` (a volume file: ``image`` is the file's own voxel grid, ``slices`` and
    ``source_headers`` are empty, the UIDs are empty strings and ``frame_of_reference_uid`` is None, so outputs
    that reference source instances, such as the DICOM SEG, cannot be made).
    """

    image: sitk.Image
    slices: list[SourceSlice]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    resampled: bool
    warnings: list[QualityWarning] = field(default_factory=list)
    series_found: list[SeriesSummary] = field(default_factory=list)
    transfer_syntaxes: list[str] = field(default_factory=list)
    # pixel-free headers of the source instances in volume order (for DICOM SEG references); never logged
    source_headers: list[pydicom.Dataset] = field(default_factory=list)
    source_kind: SourceKind = "dicom"

    @property
    def has_source_instances(self) -> bool:
        """True when results can be mapped onto, and reference, original DICOM instances."""
        return self.source_kind == "dicom" and bool(self.source_headers)

    @property
    def slice_count(self) -> int:
        """Axial slices of the input: source instances for DICOM, slices (z size) of the volume for NIfTI."""
        return len(self.slices) if self.source_kind == "dicom" else int(self.image.GetSize()[2])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        sx, sy, sz = self.image.GetSpacing()
        return (sz, sy, sx)

    @property
    def hu_array(self) -> np.ndarray:
        """HU as float32, shape (z, y, x); a read-only view into SimpleITK's buffer, do not modify.

        The view keeps ``image`` alive (a bare ``GetArrayViewFromImage`` view dangles once the image is freed,
        e.g. ``load_series(...).hu_array``)."""
        return np.asarray(_ImageBufferOwner(self.image))
