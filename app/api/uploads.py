"""Receive a prediction upload while streaming, counting bytes, into a private temporary folder.

Accepted bodies:

* ``multipart/form-data``: one or more ``files`` parts (DICOM instances and/or ZIP archives, or one NIfTI volume)
  and optional ``series_instance_uid`` / ``onset_to_ct_hours`` text fields;
* ``application/zip`` (or ``application/x-zip-compressed``): one archive;
* ``application/dicom`` or ``application/octet-stream``: one DICOM instance or archive (sniffed by content);
* ``application/gzip``, ``application/x-gzip`` or ``application/x-nifti``: one NIfTI volume (``.nii.gz`` or
  ``.nii``; recognised by content like everything else, the part's name and type are never trusted);
* ``multipart/related; type="application/dicom"``: a DICOMweb STOW-RS style body, one instance per part.

The body size is counted as it arrives (Content-Length is only used to refuse early). Part file names are
never used on disk: every part is written to ``part-<n>`` inside a ``tempfile.mkdtemp`` folder that
:meth:`Upload.cleanup` removes. Archive contents are expanded in memory by ingestion, never to disk.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

from app.api.problems import Problem

FIELD_NAMES = ("series_instance_uid", "onset_to_ct_hours")
MAX_FIELD_BYTES = 1024
SINGLE_BODY_TYPES = {
    "application/zip",
    "application/x-zip-compressed",
    "application/dicom",
    "application/octet-stream",
    "application/gzip",
    "application/x-gzip",
    "application/x-nifti",
}


@dataclass
class Upload:
    directory: Path
    files: list[Path] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    nbytes: int = 0

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class _PartWriter:
    """python-multipart callbacks: file parts to disk, small text fields to memory."""

    def __init__(self, upload: Upload, max_files: int, file_field: str | None):
        self.upload = upload
        self.max_files = max_files
        self.file_field = file_field  # None: every part is a file (multipart/related)
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[str, bytes] = {}
        self._sink: IO[bytes] | None = None
        self._field: str | None = None
        self._field_value = bytearray()
        self.finished = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _part_begin(self) -> None:
        self._headers = {}
        self._field = None
        self._field_value = bytearray()

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        name = None
        filename = None
        disposition = self._headers.get("content-disposition")
        if disposition:
            _, params = parse_options_header(disposition)
            name = params.get(b"name", b"").decode("utf-8", "replace") or None
            filename = params.get(b"filename")
        is_file = self.file_field is None or name == self.file_field or filename is not None
        if is_file:
            if len(self.upload.files) >= self.max_files:
                raise Problem("too_many_files", f"At most {self.max_files} files per request")
            path = self.upload.directory / f"part-{len(self.upload.files):05d}"
            self._sink = open(path, "wb")  # noqa: SIM115 - closed in _part_end / close()
            self.upload.files.append(path)
        elif name in FIELD_NAMES:
            self._field = name
        else:
            self._field = ""  # unknown field: read and ignore

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])
        elif self._field is not None:
            if len(self._field_value) + (end - start) > MAX_FIELD_BYTES:
                raise Problem("invalid_request", f"Form field too long (max {MAX_FIELD_BYTES} bytes)")
            self._field_value += data[start:end]

    def _part_end(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        elif self._field:
            self.upload.fields[self._field] = self._field_value.decode("utf-8", "replace").strip()
        self._field = None

    def _end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


async def receive_upload(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    *,
    max_body_bytes: int,
    max_files: int,
    upload_dir: Path | None = None,
) -> Upload:
    """Stream the body into a new temp folder. Raises :class:`Problem` (400/413/415); on any failure the
    folder is removed before the exception propagates."""
    media, params = parse_options_header(content_type or "")
    media_type = media.decode("latin-1").lower()
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise Problem("invalid_request", "Content-Length is not an integer") from None
        if declared > max_body_bytes:
            raise Problem("body_too_large", f"The body exceeds the limit of {max_body_bytes} bytes")
    multipart_file_field: str | None
    if media_type == "multipart/form-data":
        multipart_file_field = "files"
    elif media_type == "multipart/related":
        multipart_file_field = None
        part_type = params.get(b"type", b"application/dicom").decode("latin-1").lower()
        if part_type != "application/dicom":
            raise Problem("unsupported_media_type", "multipart/related bodies must have type=application/dicom")
    elif media_type in SINGLE_BODY_TYPES:
        multipart_file_field = ""
    else:
        raise Problem(
            "unsupported_media_type",
            "Send multipart/form-data ('files' parts), application/zip, application/dicom, a NIfTI volume "
            '(application/gzip or application/x-nifti) or multipart/related; type="application/dicom"',
        )
    is_multipart = media_type.startswith("multipart/")
    boundary = params.get(b"boundary")
    if is_multipart and not boundary:
        raise Problem("invalid_request", "The multipart content type has no boundary")

    directory = Path(tempfile.mkdtemp(prefix="ich-upload-", dir=upload_dir))
    upload = Upload(directory=directory)
    writer: _PartWriter | None = None
    single: IO[bytes] | None = None
    try:
        if is_multipart:
            writer = _PartWriter(upload, max_files, multipart_file_field)
            parser = MultipartParser(boundary, writer.callbacks())  # type: ignore[arg-type]
        else:
            path = directory / "part-00000"
            single = open(path, "wb")  # noqa: SIM115 - closed below
            upload.files.append(path)
        async for chunk in stream:
            if not chunk:
                continue
            upload.nbytes += len(chunk)
            if upload.nbytes > max_body_bytes:
                raise Problem("body_too_large", f"The body exceeds the limit of {max_body_bytes} bytes")
            if writer is not None:
                try:
                    parser.write(chunk)
                except Problem:
                    raise
                except Exception as exc:  # python-multipart raises MultipartParseError and friends
                    raise Problem("invalid_request", f"Malformed multipart body: {type(exc).__name__}") from None
            else:
                assert single is not None
                single.write(chunk)
        if writer is not None:
            writer.close()
            if not writer.finished:
                raise Problem("invalid_request", "The multipart body is incomplete (no closing boundary)")
        if single is not None:
            single.close()
        for path in [p for p in upload.files if p.stat().st_size == 0]:  # empty parts carry nothing
            path.unlink()
            upload.files.remove(path)
        return upload
    except BaseException:
        if writer is not None:
            writer.close()
        if single is not None:
            single.close()
        upload.cleanup()
        raise
