"""NIfTI-1 volume files (``.nii``, ``.nii.gz``) -> :class:`~app.ingestion.types.IngestedSeries` (HU, LPS).

Recognition is by content, never by file name: a NIfTI-1 file starts with ``sizeof_hdr = 348`` (either byte
order) and carries the magic ``n+1\\0`` (single file) or ``ni1\\0`` (header of a two-file pair) at byte 344; a
gzip stream (``1f 8b``) is recognised when its first 348 decompressed bytes are such a header.

Reading, in order (each step refuses with a stable code):

1. the gzip stream is decompressed in memory, bounded by the :class:`~app.ingestion.sources.ArchiveLimits`
   (total bytes, compression ratio: ``archive_limit_exceeded``);
2. the header is checked before any voxel is read: one scalar 3D volume (a 4D file with a single volume is
   accepted; several volumes, vector/RGB/complex voxels, a two-file ``.hdr``/``.img`` pair or NIfTI-2:
   ``unsupported_volume``; 2D: ``too_few_slices``), at most :data:`MAX_VOXELS` voxels, data not truncated
   and the orientation given by the qform or sform (``invalid_nifti``, ``inconsistent_geometry``);
3. SimpleITK reads it (``NiftiImageIO``: RAS to LPS, units to mm, ``scl_slope``/``scl_inter`` applied) and
   the voxels become float32;
4. the quality gate shared with DICOM (:mod:`~app.ingestion.series`, :mod:`~app.ingestion.geometry`):
   orthonormal axes (``inconsistent_geometry``), spacing within (0, 100] mm, the slice axis (array axis z of
   the z-y-x array, ITK axis 2) within 45 degrees of S-I (``not_axial``), at least ``min_slices`` slices
   (``too_few_slices``);
5. the intensities must be CT Hounsfield units (:func:`check_hounsfield`, ``not_hounsfield_units``).

The image keeps the file's own voxel grid (no reorientation), so the returned mask lines up voxel for voxel with
the input file. A NIfTI file carries no patient identifiers; nothing from the file (not even its name) is
logged.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from app.errors import IngestionError, QualityWarning, RefusalCode, WarningCode
from app.ingestion.geometry import require_slices
from app.ingestion.series import is_axial, orthonormal, spacing_plausible
from app.ingestion.sources import ArchiveLimits
from app.ingestion.types import IngestedSeries

GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_BYTES = 348
NIFTI1_MAGICS = (b"n+1\0", b"ni1\0")
NIFTI2_MAGICS = (b"n+2\0", b"ni2\0")
MAX_VOXELS = 1 << 28  # 1024 x 1024 x 256; float32 HU then takes 1 GiB
#: NIfTI datatype codes of scalar real voxels -> bits per voxel
SCALAR_DATATYPES = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64}
#: air in HU: a head CT in HU always holds air around and inside the head (sinuses, mastoids)
AIR_BAND_HU = (-1200.0, -500.0)
MIN_AIR_FRACTION = 0.01
_CHUNK = 1 << 20

NO_SEG_MESSAGE = ("The input is a NIfTI volume: it has no DICOM source instances, so no DICOM SEG is produced; "
                  "the NIfTI mask and the overlay are.")


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1 header that decide whether the file can be read (sizes in voxels)."""

    endian: str  # "<" or ">"
    dims: tuple[int, ...]  # dim[1..dim[0]]
    datatype: int
    bitpix: int
    vox_offset: int
    qform_code: int
    sform_code: int
    single_file: bool


def _invalid(message: str, **details: object) -> IngestionError:
    return IngestionError(RefusalCode.INVALID_NIFTI, message, dict(details))


def _unsupported(message: str, **details: object) -> IngestionError:
    return IngestionError(RefusalCode.UNSUPPORTED_VOLUME, message, dict(details))


def _is_header(head: bytes) -> bool:
    if len(head) >= NIFTI1_HEADER_BYTES and head[344:348] in NIFTI1_MAGICS:
        return head[:4] in (struct.pack("<i", 348), struct.pack(">i", 348))
    return len(head) >= 12 and head[4:8] in NIFTI2_MAGICS and head[:4] in (struct.pack("<i", 540),
                                                                          struct.pack(">i", 540))


def _head_bytes(data: bytes, n: int = 540) -> bytes:
    """The first ``n`` bytes of the file, decompressing only as much of a gzip stream as needed."""
    if not data.startswith(GZIP_MAGIC):
        return data[:n]
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:64 * 1024], n)
    except zlib.error:
        return b""


def is_nifti(data: bytes) -> bool:
    """True when ``data`` (a file's bytes, possibly gzip-compressed) is a NIfTI file, by content."""
    return _is_header(_head_bytes(data))


def _limit_error(limits: ArchiveLimits, what: str) -> IngestionError:
    if what == "ratio":
        return IngestionError(
            RefusalCode.ARCHIVE_LIMIT_EXCEEDED,
            f"A compressed volume expands more than {limits.max_compression_ratio:g}:1; it is refused as a "
            "possible archive bomb.",
            {"limit": "max_compression_ratio", "scope": "member", "value": limits.max_compression_ratio},
        )
    return IngestionError(RefusalCode.ARCHIVE_LIMIT_EXCEEDED,
                          f"The input is larger than {limits.max_total_bytes} bytes once uncompressed.",
                          {"limit": "max_total_bytes", "value": limits.max_total_bytes})


def _gunzip(data: bytes, limits: ArchiveLimits) -> bytearray:
    """Decompress a (possibly multi-member) gzip stream in chunks, enforcing the total-size and
    compression-ratio limits while it grows (a forged header cannot bypass them)."""
    out = bytearray()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pos = 0
    try:
        while True:
            chunk = inflater.unconsumed_tail or data[pos:pos + _CHUNK]
            if not inflater.unconsumed_tail:
                pos += len(chunk)
            if not chunk:
                raise _invalid("The gzip-compressed NIfTI file is truncated.")
            out += inflater.decompress(chunk, _CHUNK)
            if len(out) > limits.max_total_bytes:
                raise _limit_error(limits, "size")
            if len(out) > _CHUNK and len(out) / max(len(data), 1) > limits.max_compression_ratio:
                raise _limit_error(limits, "ratio")
            if inflater.eof:
                rest = inflater.unused_data + data[pos:]
                if not rest.startswith(GZIP_MAGIC):
                    return out  # trailing bytes after the last gzip member are ignored, as gzip does
                inflater, data, pos = zlib.decompressobj(16 + zlib.MAX_WBITS), rest, 0
    except zlib.error:
        raise _invalid("The gzip-compressed NIfTI file is damaged.") from None


def parse_header(raw: bytes) -> NiftiHeader:
    """Parse and check the header of an uncompressed NIfTI file (``raw``); refuses unsupported variants."""
    if raw[4:8] in NIFTI2_MAGICS:
        raise _unsupported("NIfTI-2 files are not supported; save the volume as NIfTI-1 (.nii or .nii.gz).")
    endian = "<" if raw[:4] == struct.pack("<i", 348) else ">"
    ndim = struct.unpack(endian + "h", raw[40:42])[0]
    dim = struct.unpack(endian + "8h", raw[40:56])
    datatype, bitpix = struct.unpack(endian + "hh", raw[70:74])
    vox_offset = struct.unpack(endian + "f", raw[108:112])[0]
    qform_code, sform_code = struct.unpack(endian + "hh", raw[252:256])
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1:ndim + 1]):
        raise _invalid("The NIfTI header holds invalid dimensions.", dim=list(dim))
    if not np.isfinite(vox_offset) or vox_offset < 0:
        raise _invalid("The NIfTI header holds an invalid voxel offset.")
    return NiftiHeader(endian=endian, dims=tuple(int(d) for d in dim[1:ndim + 1]), datatype=int(datatype),
                       bitpix=int(bitpix), vox_offset=int(vox_offset), qform_code=int(qform_code),
                       sform_code=int(sform_code), single_file=raw[344:348] == b"n+1\0")


def check_header(header: NiftiHeader, n_bytes: int, min_slices: int) -> None:
    """Refuse what cannot be read as one scalar 3D volume, before SimpleITK allocates anything."""
    if not header.single_file:
        raise _unsupported("A two-file NIfTI (.hdr + .img) cannot be uploaded; send a single .nii or .nii.gz file.")
    if header.datatype not in SCALAR_DATATYPES:
        raise _unsupported("The NIfTI voxels are not scalar real numbers (e.g. RGB or complex).",
                           datatype=header.datatype)
    if SCALAR_DATATYPES[header.datatype] != header.bitpix:
        raise _invalid("The NIfTI header's bitpix does not match its datatype.",
                       datatype=header.datatype, bitpix=header.bitpix)
    dims = header.dims
    if len(dims) > 4 and any(d > 1 for d in dims[4:]):
        raise _unsupported("The NIfTI voxels are vectors or the file has more than four dimensions; send one "
                           "scalar 3D volume.", dims=list(dims))
    if len(dims) >= 4 and dims[3] > 1:
        raise _unsupported(f"The NIfTI file holds {dims[3]} volumes (a 4D series); send one 3D volume.",
                           n_volumes=dims[3])
    if len(dims) < 3 or dims[2] == 1:
        require_slices(1, max(min_slices, 2))  # a single slice is never read as a volume
    n_voxels = int(np.prod(dims, dtype=np.int64))
    if n_voxels > MAX_VOXELS:
        raise IngestionError(RefusalCode.ARCHIVE_LIMIT_EXCEEDED,
                             f"The volume holds more than {MAX_VOXELS} voxels.",
                             {"limit": "max_voxels", "value": MAX_VOXELS})
    if header.vox_offset < NIFTI1_HEADER_BYTES + 4 or n_bytes < header.vox_offset + n_voxels * header.bitpix // 8:
        raise _invalid("The NIfTI file is truncated or its voxel offset is wrong: it holds fewer bytes than its "
                       "header declares.", n_bytes=n_bytes)
    if header.qform_code <= 0 and header.sform_code <= 0:
        raise IngestionError(
            RefusalCode.INCONSISTENT_GEOMETRY,
            "The NIfTI header gives no orientation (qform_code and sform_code are 0), so the slice axis and "
            "patient directions are unknown.",
        )


def _check_finite(raw: bytes, header: NiftiHeader) -> None:
    """Refuse NaN or infinite float voxels (SimpleITK's reader would silently turn NaN into 0 HU, i.e. water)."""
    kind = {16: "f4", 64: "f8"}.get(header.datatype)
    if kind is None:
        return
    n_voxels = int(np.prod(header.dims, dtype=np.int64))
    values = np.frombuffer(raw, dtype=header.endian + kind, count=n_voxels, offset=header.vox_offset)
    if not np.isfinite(values).all():
        raise IngestionError(RefusalCode.NOT_HOUNSFIELD_UNITS,
                             "The volume holds NaN or infinite values; CT Hounsfield units are finite numbers.")


def _read_image(raw: bytes, min_slices: int) -> sitk.Image:
    """SimpleITK's NIfTI reader on a private temporary copy (it reads files only); float32 HU, 3D."""
    with tempfile.TemporaryDirectory(prefix="ich-nifti-in-") as tmp:
        path = os.path.join(tmp, "volume.nii")
        with open(path, "wb") as fh:
            fh.write(raw)
        reader = sitk.ImageFileReader()
        reader.SetImageIO("NiftiImageIO")
        reader.SetFileName(path)
        try:
            image = reader.Execute()
        except RuntimeError:
            raise _invalid("The NIfTI file cannot be read (damaged header or data).") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise _unsupported("The NIfTI voxels are not scalar.")
    if image.GetDimension() < 3:
        require_slices(1, max(min_slices, 2))
    if image.GetDimension() > 3:
        size = list(image.GetSize())
        if any(s > 1 for s in size[3:]):
            raise _unsupported("The NIfTI file holds more than one volume; send one 3D volume.")
        image = sitk.Extract(image, [*size[:3], *([0] * (len(size) - 3))], [0] * len(size))
    return sitk.Cast(image, sitk.sitkFloat32)


def check_geometry(image: sitk.Image, min_slices: int) -> None:
    """The DICOM quality gate on a volume: orthonormal axes, plausible spacing, axial slices, enough slices."""
    d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # columns: ITK axes x, y, z in LPS
    orientation = (*d[:, 0], *d[:, 1])
    normal = np.cross(d[:, 0], d[:, 1])
    if not orthonormal(orientation) or abs(abs(float(normal @ d[:, 2])) - 1.0) > 1e-2:
        raise IngestionError(RefusalCode.INCONSISTENT_GEOMETRY, "The NIfTI axes are not orthogonal unit vectors.")
    spacing = image.GetSpacing()
    if not spacing_plausible(spacing) or not all(np.isfinite(image.GetOrigin())):
        raise IngestionError(RefusalCode.INCONSISTENT_GEOMETRY,
                             "The NIfTI voxel spacing or origin is not plausible (each spacing must be 0-100 mm).",
                             {"spacing_xyz_mm": [round(float(v), 6) for v in spacing]})
    if not is_axial(orientation):
        raise IngestionError(
            RefusalCode.NOT_AXIAL,
            "The volume's slice axis (the third NIfTI axis) is more than 45 degrees from head-feet: it is not an "
            "axial stack.",
            {"slice_axis_lps": [round(float(v), 4) for v in d[:, 2]]},
        )
    require_slices(int(image.GetSize()[2]), min_slices)


def check_hounsfield(hu: np.ndarray) -> None:
    """Refuse ``not_hounsfield_units`` unless the intensities (z-y-x) look like CT HU.

    A head CT in HU holds air (-1200 to -500 HU) around the head and in the sinuses: at least
    :data:`MIN_AIR_FRACTION` of the voxels. MR images, 0-1 normalised or z-scored volumes and CT stored without
    its rescale (HU + 1024) have none. NaN or infinite voxels are refused as well. The air fraction is counted
    on every second row and column (deterministic, ~4x faster)."""
    if not np.isfinite(hu).all():  # e.g. scl_slope overflowing float32
        raise IngestionError(RefusalCode.NOT_HOUNSFIELD_UNITS,
                             "The volume holds NaN or infinite values; CT Hounsfield units are finite numbers.")
    sample = hu[:, ::2, ::2]
    air = float(np.count_nonzero((sample >= AIR_BAND_HU[0]) & (sample <= AIR_BAND_HU[1]))) / max(sample.size, 1)
    if air < MIN_AIR_FRACTION:
        p1, p50, p99 = (round(float(v), 3) for v in np.percentile(sample, [1, 50, 99]))
        raise IngestionError(
            RefusalCode.NOT_HOUNSFIELD_UNITS,
            f"The volume does not look like CT in Hounsfield units: {100 * air:.2f} % of its voxels are air "
            f"(-1200 to -500 HU; a head CT has far more). Is it MR, a normalised image, or CT stored without its "
            f"rescale (HU + 1024)?",
            {"air_fraction": round(air, 5), "percentiles_1_50_99": [p1, p50, p99]},
        )


def load_nifti(data: bytes, *, limits: ArchiveLimits | None = None, min_slices: int = 3) -> IngestedSeries:
    """Read and check one NIfTI file's bytes (``.nii`` or ``.nii.gz``, recognised by :func:`is_nifti`).

    Returns an :class:`IngestedSeries` with ``source_kind="nifti"``: float32 HU on the file's own grid (LPS, mm;
    z-y-x as a numpy array), no source instances, empty UIDs, and the ``no_dicom_source`` warning."""
    limits = limits or ArchiveLimits()
    try:
        raw = _gunzip(data, limits) if data.startswith(GZIP_MAGIC) else data
        if len(raw) > limits.max_total_bytes:
            raise _limit_error(limits, "size")
        header = parse_header(raw)
        check_header(header, len(raw), min_slices)
        _check_finite(raw, header)
        image = _read_image(raw, min_slices)
        del raw
    except (struct.error, ValueError, OverflowError, MemoryError, RuntimeError):
        # a header the checks above did not foresee: a refusal, never an unexpected error
        raise _invalid("The NIfTI file cannot be read (damaged header or data).") from None
    check_geometry(image, min_slices)
    check_hounsfield(sitk.GetArrayViewFromImage(image))
    return IngestedSeries(
        image=image,
        slices=[],
        study_instance_uid="",
        series_instance_uid="",
        frame_of_reference_uid=None,
        resampled=False,
        warnings=[QualityWarning(WarningCode.NO_DICOM_SOURCE, NO_SEG_MESSAGE)],
        source_kind="nifti",
    )
