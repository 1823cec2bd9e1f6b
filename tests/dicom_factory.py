"""Craft small, real DICOM CT series (pydicom) with controllable edge cases, for tests.

Geometry conventions: LPS, mm. ``tilt_deg`` tilts the slice planes about the patient x axis the way a gantry
tilt does (GE/Philips style: IOP ``(1,0,0, 0,cos t,-sin t)``, IPP stepping along z only), so that the distance
between slice planes along their normal is ``spacing``. Pixel content is given as a function of the physical
position of each pixel centre (``hu_at(points_lps) -> HU``), so a tilted series samples the same 3D object.

Public API: :func:`make_ct_dataset`, :func:`write_ct_series`, :func:`sphere_phantom`, :func:`zip_paths`,
:func:`write_dicomdir_zip`.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

HuFunction = Callable[[np.ndarray], np.ndarray]  # (..., 3) LPS points in mm -> HU

UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def sphere_phantom(centre: Sequence[float] = (0.0, 0.0, 0.0), radius: float = 8.0, inside: float = 1000.0,
                   background: float = 40.0) -> HuFunction:
    """A sphere of ``inside`` HU (radius mm, centre LPS mm) in a ``background`` HU medium."""
    c = np.asarray(centre, dtype=np.float64)

    def hu(points: np.ndarray) -> np.ndarray:
        dist = np.linalg.norm(points - c, axis=-1)
        return np.where(dist <= radius, inside, background)

    return hu


def make_ct_dataset(
    hu: np.ndarray,
    *,
    position: Sequence[float],
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: Sequence[float] = (0.5, 0.5),
    series_uid: str | None = None,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    instance_number: int = 1,
    modality: str = "CT",
    sop_class_uid: str = CTImageStorage,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    slice_thickness: float | None = 5.0,
    series_description: str = "HEAD 5MM",
    slope: float = 1.0,
    intercept: float = -1024.0,
    signed: bool = True,
    pixel_padding: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> pydicom.FileDataset:
    """One single-frame CT Image Storage dataset holding ``hu`` (rows, cols) encoded with slope/intercept.

    ``pixel_padding`` is a stored value written as PixelPaddingValue; pixels whose HU is NaN in ``hu`` receive it.
    Compressed ``transfer_syntax`` values are encoded with pydicom's ``Dataset.compress`` (RLE, JPEG-LS,
    JPEG 2000 lossless; needs the matching encoder plugin).
    """
    hu = np.asarray(hu, dtype=np.float64)
    stored = np.round((np.nan_to_num(hu, nan=0.0) - intercept) / slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    stored = np.clip(stored, info.min, info.max).astype(dtype)
    if pixel_padding is not None:
        stored[np.isnan(hu)] = pixel_padding
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.SeriesDescription = series_description
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = "SYN0001"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20200101", "120000", "1"
    ds.InstanceNumber = instance_number
    ds.SeriesNumber = 2
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = slice_thickness
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "HU"
    if pixel_padding is not None:
        ds.add_new(0x00280120, "SS" if signed else "US", int(pixel_padding))
    ds.PixelData = stored.tobytes()
    if transfer_syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif transfer_syntax not in UNCOMPRESSED:
        ds.compress(transfer_syntax, stored)
    return ds


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ts = ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return path


def write_ct_series(
    directory: str | Path,
    n_slices: int = 8,
    rows: int = 64,
    cols: int = 64,
    *,
    pixel_spacing: tuple[float, float] = (0.5, 0.5),
    spacing: float = 5.0,
    positions_mm: Sequence[float] | None = None,
    tilt_deg: float = 0.0,
    gaps: Sequence[int] = (),
    origin: Sequence[float] = (-16.0, -16.0, 0.0),
    hu_at: HuFunction | None = None,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    orientation: Sequence[float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    slope: float = 1.0,
    intercept: float = -1024.0,
    signed: bool = True,
    pixel_padding: int | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_description: str = "HEAD 5MM",
    slice_thickness: float | None = None,
    shuffle_names: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write a CT series into ``directory`` and return the file paths in acquisition (position) order.

    Slice k lies at distance ``positions_mm[k]`` (default ``k * spacing``) along the slice normal from ``origin``;
    indices in ``gaps`` are left out (missing slices). File names are random (``shuffle_names``) so that tests
    cannot accidentally rely on name order; InstanceNumber runs backwards for the same reason.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = math.radians(tilt_deg)
    if orientation is None:
        orientation = (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))
    r = np.asarray(orientation[:3], dtype=np.float64)
    c = np.asarray(orientation[3:], dtype=np.float64)
    n = np.cross(r, c)
    hu_at = hu_at or sphere_phantom(centre=(0.0, 0.0, spacing * (n_slices - 1) / 2), radius=6.0)
    dists = list(positions_mm) if positions_mm is not None else [k * spacing for k in range(n_slices)]
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    jj, ii = np.mgrid[0:rows, 0:cols]
    paths: list[Path] = []
    names = rng.permutation(len(dists)) if shuffle_names else np.arange(len(dists))
    for k, dist in enumerate(dists):
        if k in gaps:
            continue
        # a tilted gantry moves the table along z only: the IPP steps along z by dist / cos(t)
        ipp = np.asarray(origin, dtype=np.float64) + np.array([0.0, 0.0, dist / max(abs(float(n[2])), 1e-6)])
        pts = ipp + ii[..., None] * pixel_spacing[1] * r + jj[..., None] * pixel_spacing[0] * c
        ds = make_ct_dataset(
            hu_at(pts), position=ipp, orientation=orientation, pixel_spacing=pixel_spacing,
            series_uid=series_uid, study_uid=study_uid, frame_of_reference_uid=frame_uid,
            instance_number=len(dists) - k, modality=modality, image_type=image_type,
            slice_thickness=slice_thickness if slice_thickness is not None else spacing,
            series_description=series_description, slope=slope, intercept=intercept, signed=signed,
            pixel_padding=pixel_padding, transfer_syntax=transfer_syntax,
        )
        name = f"x{int(names[k]):04d}{rng.integers(1 << 30):x}" if shuffle_names else f"{k:04d}.dcm"
        paths.append(save(ds, directory / name))
    return paths


def zip_paths(paths: Sequence[Path], root: Path | None = None, extra: dict[str, bytes] | None = None) -> bytes:
    """A ZIP (in memory) of ``paths`` (names relative to ``root``) plus ``extra`` name -> bytes members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, str(p.relative_to(root)) if root else p.name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def write_dicomdir_zip(paths: Sequence[Path], workdir: Path) -> bytes:
    """Write the instances as a DICOM File-set with a DICOMDIR (pydicom FileSet) and return it as ZIP bytes."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    for p in paths:
        fs.add(pydicom.dcmread(p))
    out = workdir / "fileset"
    fs.write(out)
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    return zip_paths(files, root=out, extra={"README.TXT": b"not dicom"})
