"""Write a synthetic case as a DICOM CT Image Storage series, the way a scanner would send it.

Pixel data: int16 (PixelRepresentation 1), stored value = HU + 1024 (RescaleIntercept -1024, slope 1), one
file per axial slice, identity ImageOrientationPatient, ImagePositionPatient = LPS centre of the first
transmitted pixel. UIDs are derived deterministically from (seed, index) with ``pydicom.uid.generate_uid``, so a
cohort written twice is byte-identical. Patient data are synthetic and non-identifying (no birth date). A
follow-up scan (``case.scan == "followup"``) keeps the patient name and ID of its case, has its own UIDs and is
dated at its acquisition time (``case.acquired_at``), later than the baseline.
Optional lossless compression (``transfer_syntax``): RLE Lossless, JPEG 2000 Lossless, JPEG-LS Lossless
(pydicom encoders backed by the installed pylibjpeg / pyjpegls / gdcm plugins), or Deflated Explicit VR Little Endian.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from model_training.synthetic.case import SyntheticCase
from model_training.synthetic.scanners import WINDOW_CENTER_HU, WINDOW_WIDTH_HU

RESCALE_INTERCEPT = -1024
SUPPORTED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless,
                               DeflatedExplicitVRLittleEndian)
_UID_NAMESPACE = "ich-expansion-synthetic-v1"


def case_uids(case: SyntheticCase) -> dict[str, str]:
    """Deterministic Study/Series/FrameOfReference UIDs of a case."""
    base = [_UID_NAMESPACE, str(case.seed), str(case.index), *_scan_entropy(case)]
    return {
        "study": generate_uid(entropy_srcs=[*base, "study"]),
        "series": generate_uid(entropy_srcs=[*base, "series"]),
        "frame_of_reference": generate_uid(entropy_srcs=[*base, "frame_of_reference"]),
    }


def _scan_entropy(case: SyntheticCase) -> list[str]:
    """Extra UID entropy of a follow-up scan (none for a baseline, whose UIDs stay as they always were)."""
    return [] if case.scan == "baseline" else [case.scan]


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _base_dataset(case: SyntheticCase, uids: dict[str, str]) -> Dataset:
    ds = Dataset()
    number = case.case_id[3:]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    date = case.acquired_at.strftime("%Y%m%d")
    time = case.acquired_at.strftime("%H%M%S")
    for prefix in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time)
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = case.scanner.manufacturer
    ds.InstitutionName = "Synthetic cohort"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WITHOUT CONTRAST (synthetic)" if case.scan == "baseline" else \
        "CT HEAD WITHOUT CONTRAST FOLLOW-UP (synthetic)"
    ds.SeriesDescription = "Head 5.0 mm axial (synthetic phantom)"
    ds.ManufacturerModelName = case.scanner.model_name
    ds.PatientName = f"SYNTHETIC^CASE{number}"
    ds.PatientID = f"SYN{number}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _ds(case.spacing_zyx[0])
    ds.KVP = "120"
    ds.SpacingBetweenSlices = _ds(case.spacing_zyx[0])
    ds.GantryDetectorTilt = _ds(0.0)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in (1, 0, 0, 0, 1, 0)]
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(case.hu.shape[1]), int(case.hu.shape[2])
    ds.PixelSpacing = [_ds(case.spacing_zyx[1]), _ds(case.spacing_zyx[2])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = _ds(WINDOW_CENTER_HU)
    ds.WindowWidth = _ds(WINDOW_WIDTH_HU)
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = _ds(1)
    ds.RescaleType = "HU"
    ds.BurnedInAnnotation = "NO"
    return ds


def write_dicom_series(case: SyntheticCase, out_dir: str | Path, transfer_syntax: str | None = None) -> list[Path]:
    """Write one file per slice into ``out_dir`` (created) and return the paths in slice order (inferior first).

    Instance numbers run from the vertex down (1 = most superior slice), as many head protocols do; readers must
    order slices by ImagePositionPatient, not by InstanceNumber or file name.
    """
    ts = UID(transfer_syntax or ExplicitVRLittleEndian)
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {ts} ({ts.name}); use one of "
                         f"{[str(u) for u in SUPPORTED_TRANSFER_SYNTAXES]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    uids = case_uids(case)
    base = _base_dataset(case, uids)
    n = case.hu.shape[0]
    stored = (case.hu.astype(np.int32) - RESCALE_INTERCEPT).astype(np.int16)
    x0, y0, z0 = case.origin_xyz
    dz = case.spacing_zyx[0]
    paths: list[Path] = []
    for k in range(n):
        instance = n - k
        sop_uid = generate_uid(entropy_srcs=[_UID_NAMESPACE, str(case.seed), str(case.index), *_scan_entropy(case),
                                             "sop", str(k)])
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = instance
        z = z0 + k * dz
        ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
        ds.SliceLocation = _ds(z)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        pixels = np.ascontiguousarray(stored[k])
        if ts.is_compressed:
            ds.compress(ts, pixels, generate_instance_uid=False)
        else:
            ds.PixelData = pixels.tobytes()
            meta.TransferSyntaxUID = ts
        path = out / f"IM{instance:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
