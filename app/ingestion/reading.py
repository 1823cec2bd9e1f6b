"""Parse DICOM headers, classify objects, decode pixels and convert to Hounsfield units.

Classification (``classify``) decides, from the header only, whether an object is a candidate axial CT image
slice or is skipped, and why. Skip reasons (reported as counts, never with identifiers):

``not_dicom``           content is neither a Part 10 file nor a sane preamble-less dataset
``directory``           DICOMDIR / Media Storage Directory (index files such as Philips DIRFILE)
``no_pixel_data``       no (7FE0,0010) Pixel Data (structured reports, presentation states, ...)
``non_ct_modality``     an image whose Modality is not CT (counted separately to refuse with ``not_ct``)
``secondary_capture``   Secondary Capture SOP classes (screen captures, dose sheets) even when Modality is CT
``other_sop_class``     any other SOP class that is not CT Image Storage
``enhanced_multiframe`` Enhanced / Legacy Converted Enhanced CT (multi-frame): not supported, see below
``localizer``           ImageType contains LOCALIZER (scouts, surviews)
``derived_non_hu``      CT whose pixels are not HU (RescaleType other than HU/US, e.g. perfusion maps)

Enhanced multi-frame CT is deliberately *not* supported: its geometry and rescale live in functional groups, the
only sample available (a perfusion map) is not HU, and clinical NCCT heads are exported as single-frame CT Image
Storage. When such objects are the only CT images the caller gets ``unsupported_sop_class``.

HU conversion is per instance: ``HU = stored * RescaleSlope + RescaleIntercept`` with each file's own rescale
(lossy re-encoders rewrite it), after mapping PixelPaddingValue (and PixelPaddingRangeLimit) to air (-1024 HU).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.tag import BaseTag
from pydicom.uid import UID

from app.errors import IngestionError, RefusalCode
from app.ingestion.attributes import (
    PARSE_ERRORS,
    get_float,
    get_int,
    get_text,
    get_texts,
    raw_value,
    refuse_parse_errors,
    unreadable,
)
from app.ingestion.sources import Member, has_dicom_preamble

log = logging.getLogger(__name__)

AIR_HU = -1024.0
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data

# transfer syntaxes whose decoded pixels may differ from the original
LOSSY_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.53",
    "1.2.840.10008.1.2.4.55",
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (possibly lossy)
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}


@dataclass
class Instance:
    """A parsed candidate object. ``ds`` holds the full dataset (pixel data still encoded)."""

    label: str
    ds: pydicom.Dataset
    skip_reason: str | None = None
    pixel_hash: str | None = None
    hu: np.ndarray | None = field(default=None, repr=False)  # float32 (rows, cols), filled by decode_hu

    @property
    def transfer_syntax(self) -> str:
        """TransferSyntaxUID of the file meta (Implicit VR Little Endian when absent)."""
        meta = getattr(self.ds, "file_meta", None)
        if meta is None:
            return "1.2.840.10008.1.2"
        ts = get_text(meta, "TransferSyntaxUID", RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX)
        return ts or "1.2.840.10008.1.2"

    @property
    def sop_class_uid(self) -> str:
        uid = get_text(self.ds, "SOPClassUID", RefusalCode.INVALID_DICOM)
        if uid is None and getattr(self.ds, "file_meta", None) is not None:
            uid = get_text(self.ds.file_meta, "MediaStorageSOPClassUID", RefusalCode.INVALID_DICOM)
        return uid or ""


def _sane_preambleless(ds: pydicom.Dataset) -> bool:
    """A forced parse of arbitrary bytes can 'succeed'; require valid UIDs in group 0008."""
    sop_class = ds.get("SOPClassUID")
    sop_uid = ds.get("SOPInstanceUID")
    if not sop_class or not sop_uid:
        return False
    return UID(str(sop_class)).is_valid and UID(str(sop_uid)).is_valid


def parse_member(member: Member) -> Instance | None:
    """Parse one member (headers and still-encoded pixel data, read once). None when it is not DICOM."""
    preamble = has_dicom_preamble(member.data)
    try:
        ds = pydicom.dcmread(io.BytesIO(member.data), force=not preamble)
        if not preamble and not _sane_preambleless(ds):
            return None
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:  # the default transfer syntax, made explicit
            ds.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    except (*PARSE_ERRORS, InvalidDicomError, AttributeError, OSError) as exc:
        log.debug("member %s is not DICOM: %s", member.label, type(exc).__name__)
        return None
    return Instance(member.label, ds)


def _image_type(ds: pydicom.Dataset) -> list[str]:
    return get_texts(ds, "ImageType", RefusalCode.INVALID_DICOM)


def image_type(instance: Instance) -> list[str]:
    return _image_type(instance.ds)


def classify(instance: Instance) -> str | None:
    """Return the skip reason for an object, or None when it is a candidate single-frame CT image slice."""
    ds = instance.ds
    sop_class = instance.sop_class_uid
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return "directory"
    if not any(tag in ds for tag in PIXEL_DATA_TAGS):
        return "no_pixel_data"
    modality = (get_text(ds, "Modality", RefusalCode.INVALID_DICOM) or "").upper()
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary_capture"
    if modality != "CT":
        return "non_ct_modality"
    if sop_class in ENHANCED_CT_CLASSES:
        return "enhanced_multiframe"
    if sop_class != CT_IMAGE_STORAGE:
        return "other_sop_class"
    if "LOCALIZER" in _image_type(ds):
        return "localizer"
    rescale_type = (get_text(ds, "RescaleType", RefusalCode.INVALID_DICOM) or "HU").upper()
    if rescale_type not in {"HU", "US"}:
        return "derived_non_hu"
    return None


def transfer_syntax_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def check_decodable(transfer_syntax: str) -> None:
    """Raise ``unsupported_transfer_syntax`` when no installed decoder handles the transfer syntax
    (including a TransferSyntaxUID that is not a transfer syntax at all)."""
    uid = UID(transfer_syntax)
    if not uid.is_transfer_syntax:
        raise IngestionError(
            RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX,
            "The file meta information names a TransferSyntaxUID that is not a known transfer syntax.",
            {"transfer_syntax": str(uid) if uid.is_valid else None},
        )
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except (NotImplementedError, ValueError) as exc:
        raise IngestionError(
            RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX,
            f"Pixel data in transfer syntax {transfer_syntax_name(uid)} cannot be decoded by this service.",
            {"transfer_syntax": str(uid), "name": uid.name},
        ) from exc
    if not decoder.is_available:
        raise IngestionError(
            RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX,
            f"No decoder is installed for transfer syntax {transfer_syntax_name(uid)}.",
            {"transfer_syntax": str(uid), "name": uid.name},
        )


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Boolean mask of padding pixels (PixelPaddingValue, optionally up to PixelPaddingRangeLimit), or None."""
    code = RefusalCode.CORRUPT_PIXEL_DATA
    value = get_int(ds, "PixelPaddingValue", code)
    if value is None:
        return None
    bits = get_int(ds, "BitsAllocated", code, 16)
    representation = get_int(ds, "PixelRepresentation", code, 0)

    def signed(v: int) -> int:
        # (0028,0120) is US or SS; a value read as unsigned for signed pixel data is re-interpreted
        if representation == 1 and v >= 2 ** (bits - 1):  # type: ignore[operator]
            return v - 2**bits  # type: ignore[operator]
        return v

    value = signed(value)
    limit = get_int(ds, "PixelPaddingRangeLimit", code)
    if limit is not None:
        limit = signed(limit)
        lo, hi = min(value, limit), max(value, limit)
        return (stored >= lo) & (stored <= hi)
    return stored == value


def decode_hu(instance: Instance) -> np.ndarray:
    """Decode one single-frame CT instance to HU (float32, shape (rows, columns)).

    Raises ``unsupported_transfer_syntax`` (no decoder) or ``corrupt_pixel_data`` (the decoder failed, the
    pixel data is truncated / of the wrong shape, or an attribute read on the way cannot be parsed).
    """
    with refuse_parse_errors(RefusalCode.CORRUPT_PIXEL_DATA):
        return _decode_hu(instance)


def _decode_hu(instance: Instance) -> np.ndarray:
    ds = instance.ds
    ts = instance.transfer_syntax
    check_decodable(ts)
    try:
        stored = ds.pixel_array
    except NotImplementedError as exc:
        raise IngestionError(
            RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX,
            f"Pixel data in transfer syntax {transfer_syntax_name(ts)} cannot be decoded by this service.",
            {"transfer_syntax": ts},
        ) from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise many types (ValueError, RuntimeError, ...)
        raise IngestionError(
            RefusalCode.CORRUPT_PIXEL_DATA,
            f"The pixel data of an image ({transfer_syntax_name(ts)}) is damaged or truncated and cannot be decoded.",
            {"transfer_syntax": ts, "error": type(exc).__name__},
        ) from exc
    code = RefusalCode.CORRUPT_PIXEL_DATA
    rows, cols = get_int(ds, "Rows", code), get_int(ds, "Columns", code)
    if stored.shape != (rows, cols):
        raise IngestionError(
            RefusalCode.CORRUPT_PIXEL_DATA,
            "An image decodes to a shape that does not match its Rows/Columns (multi-frame or colour data).",
            {"decoded_shape": list(stored.shape), "rows": rows, "columns": cols},
        )
    slope = get_float(ds, "RescaleSlope", code, 1.0)
    intercept = get_float(ds, "RescaleIntercept", code, 0.0)
    if slope == 0.0:
        raise unreadable("RescaleSlope", code)
    assert slope is not None and intercept is not None
    if slope != 1.0:  # non-unit slopes (lossy re-encodings) are applied in float64 to keep HU exact
        hu = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
    else:
        hu = stored.astype(np.float32)
        if intercept != 0.0:
            hu += np.float32(intercept)
    padding = _padding_mask(ds, stored)
    if padding is not None:
        hu[padding] = AIR_HU
    return hu


def pixel_hash(instance: Instance) -> str:
    """SHA-256 of the encoded pixel bytes (identifies byte-identical duplicates without decoding); a parse error
    of the client data is refused as ``corrupt_pixel_data``."""
    with refuse_parse_errors(RefusalCode.CORRUPT_PIXEL_DATA):
        raw = raw_value(instance.ds, "PixelData", RefusalCode.CORRUPT_PIXEL_DATA) or b""
        if not isinstance(raw, bytes | bytearray):
            raise unreadable("PixelData", RefusalCode.CORRUPT_PIXEL_DATA)
        return hashlib.sha256(bytes(raw)).hexdigest()


def decode_all(instances: Sequence[Instance], max_workers: int | None = None) -> None:
    """Decode ``instances`` in a thread pool; fills ``instance.hu`` (HU, float32 (rows, columns)).

    Threads only overlap decoders that release the GIL; the gdcm, pylibjpeg-openjpeg and Pillow plugins hold it.
    JPEG 2000 still uses every core: pydicom picks the gdcm plugin first, and its OpenJPEG decodes each frame
    with several threads, so no process pool is used (measurements: bench/README.md).

    Transfer-syntax support is checked up front so that an unsupported syntax is reported as such rather than
    as whichever decode error happens to surface first. Any parse error of the client data is refused as
    ``corrupt_pixel_data``.
    """
    with refuse_parse_errors(RefusalCode.CORRUPT_PIXEL_DATA):
        for ts in sorted({i.transfer_syntax for i in instances}):
            check_decodable(ts)
        if len(instances) == 1:
            instances[0].hu = decode_hu(instances[0])
            return
        workers = max_workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for inst, hu in zip(instances, pool.map(decode_hu, instances), strict=True):
                inst.hu = hu


def is_lossy(instance: Instance) -> bool:
    """True when the transfer syntax is lossy or the header says lossy compression was applied before."""
    if instance.transfer_syntax in LOSSY_TRANSFER_SYNTAXES:
        return True
    try:
        return get_text(instance.ds, "LossyImageCompression", RefusalCode.INVALID_DICOM) == "01"
    except IngestionError:
        return True  # unreadable: assume the worst, it only adds a warning


#: attributes that highdicom reads from *every* source image when it builds a SEG (series consistency, frame
#: references and plane positions); the rest of a non-first header is copied without being parsed
SEG_PER_SOURCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpecificCharacterSet",
)
_SEG_PER_SOURCE_TAGS = frozenset(int(pydicom.datadict.tag_for_keyword(k)) for k in SEG_PER_SOURCE_KEYWORDS)


def pixel_free_header(ds: pydicom.Dataset, *, parse_all: bool = True) -> pydicom.Dataset:
    """A shallow copy of ``ds`` without pixel data (for DICOM SEG source references).

    Elements are copied as they are held, still-encoded ones (``RawDataElement``) without being parsed, so a
    header costs a dictionary copy rather than a conversion of every value. Elements whose value cannot be parsed
    (damaged, wrong VR) are left out: they could not be written into a derived object either, and the analysis
    itself never depended on them. ``parse_all=True`` checks every element that way (use it for the header the
    SEG copies patient and study attributes from, the first one); ``parse_all=False`` checks only
    :data:`SEG_PER_SOURCE_KEYWORDS`, the attributes read from every source image.
    """
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    for elem in ds.elements():  # top level, without converting raw elements
        tag = elem.tag
        if int(tag) in PIXEL_DATA_TAGS:
            continue
        if parse_all or int(tag) in _SEG_PER_SOURCE_TAGS:
            try:
                elem = ds[tag]  # parses a raw element once (and keeps the parsed one in ``ds`` too)
                _ = elem.value
            except PARSE_ERRORS:
                continue
        elements[BaseTag(tag)] = elem
    # Dataset(dict) adopts the elements as they are; item assignment would parse every private element
    out = pydicom.Dataset(elements)
    if getattr(ds, "file_meta", None) is not None:
        out.file_meta = ds.file_meta
    return out
