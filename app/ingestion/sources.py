"""Expand user inputs (files, folders, ZIP archives, raw bytes) into in-memory members.

DICOM is recognised by content, never by file name: either the 128-byte preamble followed by ``DICM``, or a
preamble-less dataset whose first elements parse and carry sane group 0002/0008 attributes (checked later by
:mod:`app.ingestion.reading`). ZIP archives (recognised by their local-file-header signature) are read in memory;
a member name from an archive is kept only as an opaque label and is never used as a path on disk.

Archive limits (:class:`ArchiveLimits`) protect the service from archive bombs: the member count, the total
uncompressed size and the compression ratio (per member and overall) are measured *while* decompressing, so a
forged header cannot bypass them, and ZIPs nested deeper than ``max_nesting`` are refused.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.errors import IngestionError, RefusalCode

ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # local file header; empty archive (end of central directory)
_CHUNK = 1 << 20
# what zipfile raises on damaged archives: bad headers (BadZipFile, struct.error, ValueError), damaged deflate
# streams (zlib.error), encrypted members (RuntimeError), unsupported methods (NotImplementedError), truncation
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, RuntimeError, EOFError, NotImplementedError,
    struct.error, zlib.error, KeyError, IndexError, OverflowError,
)


@dataclass(frozen=True)
class ArchiveLimits:
    """Resource limits for one ingestion call."""

    max_members: int = 5000  # DICOM instances + archive members in total
    max_total_bytes: int = 2 * 1024**3  # total uncompressed bytes
    max_compression_ratio: float = 200.0  # per member and overall
    max_nesting: int = 2  # ZIP inside ZIP


@dataclass(frozen=True)
class Member:
    """One candidate object, held in memory. ``label`` is for diagnostics only (never a path to open)."""

    label: str
    data: bytes


def has_dicom_preamble(data: bytes) -> bool:
    """True when ``data`` carries the DICOM Part 10 preamble and ``DICM`` prefix."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def is_zip(data: bytes) -> bool:
    return data[:4] in ZIP_SIGNATURES


class _Budget:
    """Counts members and uncompressed bytes across the whole call."""

    def __init__(self, limits: ArchiveLimits):
        self.limits = limits
        self.members = 0
        self.total_bytes = 0
        self.compressed_bytes = 0

    def add_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise IngestionError(
                RefusalCode.ARCHIVE_LIMIT_EXCEEDED,
                f"The input holds more than {self.limits.max_members} files.",
                {"limit": "max_members", "value": self.limits.max_members},
            )

    def add_bytes(self, n: int) -> None:
        self.total_bytes += n
        if self.total_bytes > self.limits.max_total_bytes:
            raise IngestionError(
                RefusalCode.ARCHIVE_LIMIT_EXCEEDED,
                f"The input is larger than {self.limits.max_total_bytes} bytes once uncompressed.",
                {"limit": "max_total_bytes", "value": self.limits.max_total_bytes},
            )


def _ratio_error(scope: str, limit: float) -> IngestionError:
    return IngestionError(
        RefusalCode.ARCHIVE_LIMIT_EXCEEDED,
        f"An archive compresses more than {limit:g}:1 ({scope}); it is refused as a possible archive bomb.",
        {"limit": "max_compression_ratio", "scope": scope, "value": limit},
    )


def _read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> bytes:
    """Decompress one member in chunks, enforcing the size and per-member/overall ratio limits as we go."""
    limit = budget.limits.max_compression_ratio
    compressed = max(info.compress_size, 1)
    budget.compressed_bytes += info.compress_size
    out = io.BytesIO()
    with zf.open(info) as fh:
        while chunk := fh.read(_CHUNK):
            out.write(chunk)
            budget.add_bytes(len(chunk))
            size = out.tell()
            # small members are exempt from the ratio test: a 1 kB header of zeros compresses well legitimately
            if size > 64 * 1024 and size / compressed > limit:
                raise _ratio_error("member", limit)
            if budget.total_bytes > 1024 * 1024 and budget.total_bytes / max(budget.compressed_bytes, 1) > limit:
                raise _ratio_error("overall", limit)
    return out.getvalue()


def _expand_zip(data: bytes, label: str, depth: int, budget: _Budget) -> Iterator[Member]:
    if depth > budget.limits.max_nesting:
        raise IngestionError(
            RefusalCode.ARCHIVE_LIMIT_EXCEEDED,
            f"ZIP archives are nested more than {budget.limits.max_nesting} levels deep.",
            {"limit": "max_nesting", "value": budget.limits.max_nesting},
        )
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except _ZIP_ERRORS as exc:
        raise IngestionError(
            RefusalCode.ARCHIVE_INVALID, "A ZIP archive in the input cannot be read.", {"error": type(exc).__name__}
        ) from exc
    with zf:
        for index, info in enumerate(infos):
            if info.is_dir():
                continue
            budget.add_member()
            try:
                content = _read_zip_member(zf, info, budget)
            except IngestionError:
                raise
            except _ZIP_ERRORS as exc:
                raise IngestionError(
                    RefusalCode.ARCHIVE_INVALID,
                    "A member of a ZIP archive cannot be decompressed.",
                    {"error": type(exc).__name__},
                ) from exc
            member_label = f"{label}!{index}"
            if is_zip(content):
                yield from _expand_zip(content, member_label, depth + 1, budget)
            else:
                yield Member(member_label, content)


def _iter_files(folder: Path) -> Iterator[Path]:
    """All regular files below ``folder``, in a stable order (symlinks to directories are not followed)."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if path.is_file():
                yield path


def expand_inputs(
    inputs: Sequence[str | os.PathLike[str] | bytes], limits: ArchiveLimits | None = None
) -> list[Member]:
    """Expand files, folders (recursive), ZIP archives and raw bytes into in-memory :class:`Member` objects.

    Nested ZIPs are expanded up to ``limits.max_nesting``. Members are not yet classified; anything may be
    non-DICOM. Raises ``empty_input`` when nothing at all was given, ``archive_invalid`` for an unreadable ZIP
    and ``archive_limit_exceeded`` when a limit is crossed. A missing path is an ``empty_input`` refusal naming
    the count of missing paths (not the paths themselves, which may hold identifiers).
    """
    limits = limits or ArchiveLimits()
    budget = _Budget(limits)
    members: list[Member] = []
    missing = 0

    def take(data: bytes, label: str) -> None:
        if is_zip(data):
            members.extend(_expand_zip(data, label, 1, budget))
        else:
            budget.add_member()
            budget.add_bytes(len(data))
            members.append(Member(label, data))

    for i, item in enumerate(inputs):
        if isinstance(item, bytes | bytearray | memoryview):
            take(bytes(item), f"upload[{i}]")
            continue
        path = Path(item)
        if path.is_dir():
            for j, file in enumerate(_iter_files(path)):
                take(file.read_bytes(), f"input[{i}]/{j}")
        elif path.is_file():
            take(path.read_bytes(), f"input[{i}]")
        else:
            missing += 1
    if not members:
        if missing:
            raise IngestionError(
                RefusalCode.EMPTY_INPUT, f"{missing} input path(s) do not exist.", {"missing_paths": missing}
            )
        raise IngestionError(RefusalCode.EMPTY_INPUT, "The input contains no files.")
    return members
