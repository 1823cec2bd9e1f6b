"""Binary DICOM Segmentation (highdicom) of the haematoma, referencing the analysed series.

The SEG shares the study, patient and frame of reference of the source series and lists every source
instance in its ReferencedSeriesSequence, with one frame per non-empty source slice (frames derived from the
source image geometry: ImagePositionPatient / ImageOrientationPatient / PixelSpacing in LPS mm), so OHIF,
3D Slicer and PACS viewers overlay it on the original images. The patient module is copied from the source
headers because DICOM requires it to match; the SEG therefore contains whatever identifiers the source did and
must be handled like the source images.

highdicom reads the type-2 patient and study attributes of the first source instance unconditionally; anonymised
series often lack some of them (the GE head CT of dcm_qa_ct has no PatientBirthDate), so a deep copy of that
header gets the missing ones as empty values (type 2: present, possibly empty) before the SEG is built. The
caller's headers are never modified.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

MANUFACTURER = "ich-expansion"
SEGMENT_LABEL = "Haematoma"
# Type-2 attributes of the Patient and General Study modules that highdicom copies from the first source image.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")


def with_type2_attributes(header: pydicom.Dataset) -> pydicom.Dataset:
    """A deep copy of ``header`` in which every missing :data:`TYPE2_PATIENT_STUDY` attribute is present and
    empty; ``header`` itself is unchanged."""
    filled = copy.deepcopy(header)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in filled:
            setattr(filled, keyword, "")
    return filled


def _algorithm(name: str, version: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=name, family=codes.cid7162.ArtificialIntelligence, version=version
    )


def build_seg(
    source_headers: Sequence[pydicom.Dataset],
    source_slice_masks: np.ndarray,
    *,
    algorithm_name: str,
    algorithm_version: str,
    software_version: str = "0.1.0",
    series_number: int = 9901,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> pydicom.Dataset:
    """Build a BINARY SEG.

    ``source_headers`` are the pixel-free headers of the analysed instances in volume order
    (``IngestedSeries.source_headers``); ``source_slice_masks`` is uint8 (n_instances, rows, columns) with frame
    k belonging to ``source_headers[k]`` (``PredictionResult.source_slice_masks``). The series and SOP Instance
    UIDs are new random UIDs unless given (:mod:`app.outputs.result_uids` derives stable ones).
    """
    masks = np.asarray(source_slice_masks)
    if masks.ndim != 3 or masks.shape[0] != len(source_headers):
        raise ValueError(
            f"need one mask frame per source instance: masks {masks.shape}, {len(source_headers)} instances"
        )
    algorithm = _algorithm(algorithm_name, algorithm_version)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Hemorrhage,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    binary = (masks > 0).astype(np.uint8)
    sources = list(source_headers)
    sources[0] = with_type2_attributes(sources[0])
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=binary,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm_name,
        software_versions=software_version,
        device_serial_number="0",
        series_description="ICH haematoma segmentation (research use)",
        content_label="HAEMATOMA",
        content_description="Automatic haematoma segmentation",
        # an all-empty result still yields a valid SEG with every frame present
        omit_empty_frames=bool(binary.any()),
    )
    return seg


def seg_bytes(seg: pydicom.Dataset) -> bytes:
    """Serialise a SEG as a DICOM Part-10 file."""
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
