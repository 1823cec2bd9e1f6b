"""Typed, fail-safe access to attributes of client-supplied DICOM datasets.

pydicom parses element values lazily: a damaged element (unknown VR, a length that is not a multiple of the
value size, a non-numeric DS/IS string) raises only when it is first read, with whichever exception the value
converter happens to produce (``NotImplementedError``, ``BytesLengthException``, ``struct.error``,
``ValueError``, ``TypeError``, ...). Every read of client data in :mod:`app.ingestion` therefore goes through the
accessors below, which turn any of those failures into an :class:`~app.errors.IngestionError` carrying the
caller's refusal code and a message that names the attribute *keyword* (never its value: values may be patient
identifiers).

Two flavours:

* ``get_*`` (strict): absent -> ``default``; present but unreadable or not convertible -> ``IngestionError``.
  Used for attributes whose value changes the result (rescale, matrix, identity of the object).
* ``try_*`` (lenient): absent *or* unreadable -> ``None``. Used where "unusable" already has a defined outcome
  (e.g. a candidate whose geometry cannot be read is reported as ``inconsistent_geometry``) or for descriptive
  attributes that are only reported (SeriesDescription).

:data:`PARSE_ERRORS` is the set of exception types that parsing untrusted DICOM may raise. Any that escape the
accessors become a refusal where they are caught, with the code named there (:func:`refuse_parse_errors`): the
pixel steps (hashing, decoding, volume assembly) refuse ``corrupt_pixel_data``, the final guard of
:func:`app.ingestion.load_series` ``invalid_dicom``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import traceback
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.errors import BytesLengthException, InvalidDicomError

from app.errors import IngestionError, RefusalCode

PARSE_ERRORS: tuple[type[BaseException], ...] = (
    BytesLengthException,
    InvalidDicomError,
    struct.error,
    zlib.error,
    ValueError,  # includes UnicodeDecodeError
    TypeError,
    KeyError,
    IndexError,
    NotImplementedError,  # unknown VR, unsupported encoding
    OverflowError,
    MemoryError,  # a declared length of gigabytes
    EOFError,
    RecursionError,  # absurdly deep sequences
)

_TAG_RE = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")

log = logging.getLogger("app.ingestion")


def unreadable(keyword: str, code: RefusalCode, exc: BaseException | None = None) -> IngestionError:
    """The refusal for an attribute that is present but cannot be parsed (message names the keyword only)."""
    details: dict[str, Any] = {"attribute": keyword}
    if exc is not None:
        details["error"] = type(exc).__name__
    return IngestionError(
        code,
        f"The DICOM attribute {keyword} of an image cannot be read (damaged value or wrong value representation).",
        details,
    )


def keyword_from_error(exc: BaseException) -> str | None:
    """Best-effort attribute keyword of a pydicom error message such as ``... in tag (0028,1053)``.

    Only the tag is taken from the message; the rest of it (which may quote element values) is discarded.
    """
    match = _TAG_RE.search(str(exc)[:2000])
    if match is None:
        return None
    tag = (int(match.group(1), 16) << 16) | int(match.group(2), 16)
    return keyword_for_tag(tag) or f"({match.group(1).upper()},{match.group(2).upper()})"


def unparsable(exc: BaseException, code: RefusalCode) -> IngestionError:
    """The refusal ``code`` for a parse error of client data that escaped the typed accessors.

    The message names the failing attribute keyword when the error says which tag failed, never the value. The
    log gets the exception type and the code location (for operators) only.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    site = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(frames)
                 if f"{os.sep}app{os.sep}" in f.filename), "?")
    keyword = keyword_from_error(exc)
    log.warning("ingestion refused unparsable client data: %s at %s (attribute %s)",
                type(exc).__name__, site, keyword or "unknown")
    what = f"the attribute {keyword}" if keyword else "an attribute"
    return IngestionError(
        code,
        f"A DICOM object in the input cannot be parsed: {what} is damaged or has a wrong value representation.",
        {"attribute": keyword, "error": type(exc).__name__},
    )


@contextmanager
def refuse_parse_errors(code: RefusalCode) -> Iterator[None]:
    """Turn any :data:`PARSE_ERRORS` raised inside the block into :func:`unparsable` with ``code``; an
    :class:`~app.errors.IngestionError` raised inside passes unchanged."""
    try:
        yield
    except PARSE_ERRORS as exc:
        raise unparsable(exc, code) from None


def raw_value(ds: pydicom.Dataset, keyword: str, code: RefusalCode) -> Any:
    """The converted value of ``keyword`` (None when absent or empty); unreadable -> ``IngestionError(code)``."""
    try:
        return ds.get(keyword)
    except PARSE_ERRORS as exc:
        raise unreadable(keyword, code, exc) from exc


def has(ds: pydicom.Dataset, keyword: str) -> bool:
    """Whether the element is present (does not parse its value)."""
    try:
        return keyword in ds
    except PARSE_ERRORS:
        return False


def _is_multi(value: Any) -> bool:
    return isinstance(value, Sequence | pydicom.multival.MultiValue) and not isinstance(value, str | bytes)


def get_text(ds: pydicom.Dataset, keyword: str, code: RefusalCode, default: str | None = None) -> str | None:
    """A single-valued text attribute (UI, CS, LO, ...), stripped; absent or empty -> ``default``."""
    value = raw_value(ds, keyword, code)
    if value is None or value == "":
        return default
    if isinstance(value, bytes):  # VR forced to OB/UN by damage
        raise unreadable(keyword, code)
    if _is_multi(value):
        if len(value) != 1:
            raise unreadable(keyword, code)
        value = value[0]
    text = str(value).strip("\x00 ")
    return text or default


def get_texts(ds: pydicom.Dataset, keyword: str, code: RefusalCode) -> list[str]:
    """A multi-valued text attribute (e.g. ImageType) as upper-case strings; absent -> ``[]``."""
    value = raw_value(ds, keyword, code)
    if value is None or value == "":
        return []
    if isinstance(value, bytes):
        raise unreadable(keyword, code)
    items = list(value) if _is_multi(value) else [value]
    return [str(v).strip("\x00 ").upper() for v in items]


def _number(value: Any, keyword: str, code: RefusalCode) -> float:
    if _is_multi(value):
        if len(value) != 1:
            raise unreadable(keyword, code)
        value = value[0]
    if isinstance(value, bytes):
        raise unreadable(keyword, code)
    try:
        out = float(value)
    except PARSE_ERRORS as exc:
        raise unreadable(keyword, code, exc) from exc
    if not math.isfinite(out):
        raise unreadable(keyword, code)
    return out


def get_float(ds: pydicom.Dataset, keyword: str, code: RefusalCode, default: float | None = None) -> float | None:
    """A single finite number (DS, FD, US, ...); absent or empty -> ``default``."""
    value = raw_value(ds, keyword, code)
    if value is None or value == "":
        return default
    return _number(value, keyword, code)


def get_int(ds: pydicom.Dataset, keyword: str, code: RefusalCode, default: int | None = None) -> int | None:
    """A single integer (US, SS, IS, ...); absent or empty -> ``default``; non-integral -> refusal."""
    value = get_float(ds, keyword, code, None)
    if value is None:
        return default
    if value != int(value):
        raise unreadable(keyword, code)
    return int(value)


def try_floats(ds: pydicom.Dataset, keyword: str, n: int, max_abs: float = 1e6) -> tuple[float, ...] | None:
    """Exactly ``n`` finite numbers with ``|v| <= max_abs``; None when absent, unreadable or out of range.

    ``max_abs`` rejects physically meaningless values (positions of 1e300 mm) before they reach the geometry.
    """
    try:
        value = ds.get(keyword)
        if value is None or isinstance(value, bytes | str):
            return None
        out = tuple(float(v) for v in value)
    except PARSE_ERRORS:
        return None
    if len(out) != n or not all(math.isfinite(v) and abs(v) <= max_abs for v in out):
        return None
    return out


def get_floats(ds: pydicom.Dataset, keyword: str, n: int, code: RefusalCode, max_abs: float = 1e6) -> tuple[float, ...]:
    """Like :func:`try_floats`, but a missing or invalid value is a refusal with ``code``."""
    out = try_floats(ds, keyword, n, max_abs)
    if out is None:
        raise unreadable(keyword, code)
    return out


def try_float(ds: pydicom.Dataset, keyword: str, max_abs: float = 1e6) -> float | None:
    """One finite number with ``|v| <= max_abs``, or None when absent, unreadable or out of range."""
    try:
        value = get_float(ds, keyword, RefusalCode.INVALID_DICOM)
    except IngestionError:
        return None
    return value if value is not None and abs(value) <= max_abs else None


def try_text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """A descriptive text attribute, or None when absent or unreadable (only ever reported, never decisive)."""
    try:
        return get_text(ds, keyword, RefusalCode.INVALID_DICOM)
    except IngestionError:
        return None
