"""Bytes for the shared store: result documents and :class:`~app.outputs.CompactResult`, without pickle.

* a document: JSON with a ``type`` tag; pydantic models named in :data:`DOCUMENT_TYPES` come back as that model
  (``prediction`` -> :class:`~app.result_schema.PredictionResponse`), any other model or JSON-able value as plain
  JSON. A feature that stores its own documents adds its model to :data:`DOCUMENT_TYPES`.
* a compact result (:func:`encode_compact`): JSON metadata followed by the raw bytes of its arrays (read back
  with ``numpy.frombuffer``, integer types only): the packed mask bits (deflated), the key-slice HU (int16),
  the geometry (LPS mm, SimpleITK x-y-z order) and the pixel-free source headers as DICOM JSON (PS3.18 F),
  which keeps every element with its VR, sequences and binary values (inline, base64); the first header in
  full, the others as their differences from it (:func:`encode_headers`).

Nothing read back from the store is executed: a damaged value fails to decode (``ValueError``).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import pydicom
from pydantic import BaseModel
from pydicom.dataelem import RawDataElement

from app.outputs import CompactResult
from app.result_schema import PredictionResponse

DOCUMENT_TYPES: dict[str, type[BaseModel]] = {"prediction": PredictionResponse}


def encode_document(result: Any) -> bytes:
    if isinstance(result, BaseModel):
        tag = next((name for name, model in DOCUMENT_TYPES.items() if type(result) is model), "json")
        body: Any = result.model_dump(mode="json")
    else:
        tag, body = "json", result
    return json.dumps({"type": tag, "body": body}, separators=(",", ":")).encode()


def decode_document(data: bytes) -> Any:
    wrapped = json.loads(data)
    model = DOCUMENT_TYPES.get(wrapped.get("type", "json"))
    return wrapped["body"] if model is None else model.model_validate(wrapped["body"])


def _header_json(ds: pydicom.Dataset) -> dict[str, Any]:
    return ds.to_json_dict(bulk_data_threshold=1 << 30)  # every binary value inline


def encode_headers(headers: tuple[pydicom.Dataset, ...]) -> list[dict[str, Any]]:
    """The headers of one series as DICOM JSON: the first in full, each other one as the elements that differ
    from the first (``diff``) and the tags it lacks (``removed``). The slices of a series share most of their
    elements (patient, study, series, equipment), so this is several times faster and smaller than each in full."""
    if not headers:
        return []
    base = headers[0]
    encoded: list[dict[str, Any]] = [{"full": _header_json(base)}]
    # as stored (raw elements stay unconverted), keyed by plain int (pydicom's Tag compares slowly)
    base_items = {int(tag): elem for tag, elem in base.items()}
    for ds in headers[1:]:
        diff = pydicom.Dataset()
        items = {int(tag): elem for tag, elem in ds.items()}
        for tag, elem in items.items():
            other = base_items.get(tag)
            if other is None or not _same(other, elem):
                diff.add(ds[tag])
        removed = [tag for tag in base_items if tag not in items]
        encoded.append({"diff": _header_json(diff), "removed": removed})
    return encoded


def _same(a: Any, b: Any) -> bool:
    """Whether two elements (raw as read, or converted) hold the same value, without converting raw ones."""
    if isinstance(a, RawDataElement) and isinstance(b, RawDataElement):
        return a.VR == b.VR and a.value == b.value and a.is_little_endian == b.is_little_endian
    if isinstance(a, RawDataElement) or isinstance(b, RawDataElement):
        return False
    return a.VR == b.VR and a.value == b.value


def decode_headers(encoded: list[dict[str, Any]]) -> tuple[pydicom.Dataset, ...]:
    if not encoded:
        return ()
    base = pydicom.Dataset.from_json(encoded[0]["full"])
    headers = [base]
    for item in encoded[1:]:
        ds = pydicom.Dataset()
        ds.update(base)  # shares the unchanged elements with the first header (read-only use)
        for tag in item["removed"]:
            del ds[tag]
        ds.update(pydicom.Dataset.from_json(item["diff"]))
        headers.append(ds)
    return tuple(headers)


def _deflate(bits: np.ndarray) -> np.ndarray:
    """Packed mask bits (uint8), deflated: a haematoma mask is mostly zeros (fast level 1)."""
    return np.frombuffer(zlib.compress(np.ascontiguousarray(bits, dtype=np.uint8).tobytes(), 1), dtype=np.uint8)


def _inflate(data: np.ndarray) -> np.ndarray:
    return np.frombuffer(zlib.decompress(data.tobytes()), dtype=np.uint8)


MAGIC = b"ICH-COMPACT-1\n"


def encode_compact(compact: CompactResult) -> bytes:
    """``MAGIC``, the length of the JSON metadata (4 bytes, big-endian), the metadata (geometry, headers, and
    each array's dtype, shape and size), then the arrays' bytes in that order."""
    arrays = {"mask_bits": _deflate(compact.mask_bits), "overlay_hu": np.ascontiguousarray(compact.overlay_hu)}
    if compact.slice_mask_bits is not None:
        arrays["slice_mask_bits"] = _deflate(compact.slice_mask_bits)
    meta = {
        "shape_zyx": list(compact.shape_zyx),
        "origin": list(compact.origin),
        "spacing": list(compact.spacing),
        "direction": list(compact.direction),
        "slice_mask_shape": None if compact.slice_mask_shape is None else list(compact.slice_mask_shape),
        "overlay_indices": list(compact.overlay_indices),
        "algorithm_name": compact.algorithm_name,
        "algorithm_version": compact.algorithm_version,
        "detected": compact.detected,
        "source_headers": encode_headers(compact.source_headers),
        "arrays": [[name, a.dtype.str, list(a.shape), a.nbytes] for name, a in arrays.items()],
    }
    head = json.dumps(meta, separators=(",", ":")).encode()
    return b"".join([MAGIC, len(head).to_bytes(4, "big"), head, *(a.tobytes() for a in arrays.values())])


def decode_compact(data: bytes) -> CompactResult:
    if not data.startswith(MAGIC):
        raise ValueError("not an encoded compact result")
    offset = len(MAGIC) + 4
    size = int.from_bytes(data[len(MAGIC):offset], "big")
    meta = json.loads(data[offset:offset + size])
    offset += size
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape, nbytes in meta["arrays"]:
        if np.dtype(dtype).kind not in "iu":
            raise ValueError(f"unexpected array type {dtype}")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize,
                                     offset=offset).reshape(shape)
        offset += nbytes
    mask_bits = _inflate(arrays["mask_bits"])
    overlay_hu = arrays["overlay_hu"]
    slice_bits = _inflate(arrays["slice_mask_bits"]) if "slice_mask_bits" in arrays else None
    headers = decode_headers(meta["source_headers"])
    return CompactResult(
        shape_zyx=tuple(meta["shape_zyx"]),
        origin=tuple(meta["origin"]),
        spacing=tuple(meta["spacing"]),
        direction=tuple(meta["direction"]),
        mask_bits=mask_bits,
        slice_mask_shape=None if meta["slice_mask_shape"] is None else tuple(meta["slice_mask_shape"]),
        slice_mask_bits=slice_bits,
        source_headers=headers,
        overlay_indices=tuple(meta["overlay_indices"]),
        overlay_hu=overlay_hu,
        algorithm_name=meta["algorithm_name"],
        algorithm_version=meta["algorithm_version"],
        detected=bool(meta["detected"]),
    )
