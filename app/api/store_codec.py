"""Bytes for the shared store: result documents and :class:`~app.outputs.CompactResult`, without pickle.

* a document: JSON with a ``type`` tag; pydantic models named in :data:`DOCUMENT_TYPES` come back as that model
  (``prediction`` -> :class:`~app.result_schema.PredictionResponse`), any other model or JSON-able value as plain
  JSON. A feature that stores its own documents adds its model to :data:`DOCUMENT_TYPES`.
* a compact result: one NumPy ``.npz`` (``allow_pickle=False``) holding the packed mask bits, the key-slice HU
  (int16), the geometry (LPS mm, SimpleITK x-y-z order) and the pixel-free source headers as DICOM JSON
  (PS3.18 F), which keeps every element with its VR, sequences and binary values (inline, base64); the first
  header in full, the others as their differences from it (:func:`encode_headers`).

Nothing read back from the store is executed: a damaged value fails to decode (``ValueError``).
"""

from __future__ import annotations

import io
import json
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
    base_items = dict(base.items())  # as stored: raw elements stay unconverted
    for ds in headers[1:]:
        diff = pydicom.Dataset()
        items = dict(ds.items())
        for tag, elem in items.items():
            other = base_items.get(tag)
            if other is None or not _same(other, elem):
                diff.add(ds[tag])
        removed = [int(tag) for tag in base_items if tag not in items]
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


def encode_compact(compact: CompactResult) -> bytes:
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
    }
    arrays = {"mask_bits": compact.mask_bits, "overlay_hu": compact.overlay_hu,
              "meta": np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), dtype=np.uint8)}
    if compact.slice_mask_bits is not None:
        arrays["slice_mask_bits"] = compact.slice_mask_bits
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode_compact(data: bytes) -> CompactResult:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        mask_bits = npz["mask_bits"]
        overlay_hu = npz["overlay_hu"]
        slice_bits = npz["slice_mask_bits"] if "slice_mask_bits" in npz.files else None
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
