"""Mutation fuzzing of ingestion itself (no HTTP): regression for "damaged DICOM is refused, never a 500"
(library exceptions escaping ``load_series`` -> HTTP 500) and the ingestion half of "no element values in logs"
(pydicom quoting element values in warnings/logs).

The mutators of the reliability suite (``tests/reliability/mutators.py``: truncation, bit flips, wrong VRs and
lengths, huge lengths, damaged geometry and pixel attributes, lying transfer syntaxes, nested sequences, random
ZIPs) are applied to a small canary series; every case must end in an :class:`IngestedSeries` or an
:class:`IngestionError`, and no canary identifier may reach a log record or a warning. Seeded; budget < 30 s.
"""

from __future__ import annotations

import collections
import io
import logging
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from dicom_factory import write_ct_series
from reliability.mutators import MUTATORS, make_case

from app.errors import IngestionError, RefusalCode
from app.ingestion import IngestedSeries, inspect_inputs, load_series

SEED = 20240601
N_CASES = 12 * len(MUTATORS)
TIME_BUDGET_S = 25.0
CANARY = {"PatientName": "Fuzzwick^Zebedee", "PatientID": "FUZZ-7731-QX", "PatientBirthDate": "19310217",
          "AccessionNumber": "ACCFUZZ991"}


@pytest.fixture(scope="module")
def canary_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """8 axial 48x48 CT slices (5 mm) carrying a recognisable patient module, as file bytes."""
    paths = write_ct_series(tmp_path_factory.mktemp("fuzz"), n_slices=8, rows=48, cols=48, seed=3)
    out = []
    for p in paths:
        ds = pydicom.dcmread(p)
        for keyword, value in CANARY.items():
            setattr(ds, keyword, value)
        ds.save_as(p, enforce_file_format=True)
        out.append(p.read_bytes())
    return out


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


def _leaks(texts: list[str]) -> list[str]:
    return [t[:200] for t in texts if any(v.lower() in t.lower() for v in CANARY.values())]


def test_mutations_end_in_a_series_or_a_refusal(canary_files: list[bytes]) -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    escaped: list[str] = []
    handler = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    t0 = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the strictest setting: ingestion must still emit none with values
            for i in range(N_CASES):
                if time.monotonic() - t0 > TIME_BUDGET_S:
                    break
                case = make_case(SEED, i, canary_files)
                inputs = [case.content] if case.content is not None else case.files
                try:
                    result = load_series(inputs)
                    assert isinstance(result, IngestedSeries)
                    outcomes["ok"] += 1
                except IngestionError as exc:
                    outcomes[str(exc.code)] += 1
                    assert not _leaks([exc.message, repr(exc.details)]), case.name
                except Exception as exc:  # noqa: BLE001 - exactly what the test looks for
                    escaped.append(f"{case.name}: {type(exc).__name__}")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    n = sum(outcomes.values()) + len(escaped)
    print(dict(outcomes.most_common()), f"{n} cases in {time.monotonic() - t0:.1f} s")
    assert not escaped, escaped[:20]
    assert n >= 4 * len(MUTATORS), f"only {n} cases within {TIME_BUDGET_S} s"
    assert outcomes["ok"] > 0 and sum(v for k, v in outcomes.items() if k != "ok") > n // 4
    assert not _leaks(handler.texts), _leaks(handler.texts)[:5]
    assert not _leaks([str(w.message) for w in caught]), _leaks([str(w.message) for w in caught])[:5]


def _with_broken_vr(data: bytes, tag: tuple[int, int], vr: bytes = b"XX") -> bytes:
    pos = data.find(tag[0].to_bytes(2, "little") + tag[1].to_bytes(2, "little"))
    assert pos > 0
    return data[: pos + 4] + vr + data[pos + 6:]


@pytest.mark.parametrize(
    ("tag", "keyword", "code"),
    [
        ((0x0028, 0x1053), "RescaleSlope", RefusalCode.CORRUPT_PIXEL_DATA),
        ((0x0008, 0x0060), "Modality", RefusalCode.INVALID_DICOM),
        ((0x0020, 0x000E), "SeriesInstanceUID", RefusalCode.INVALID_DICOM),
    ],
)
def test_unknown_vr_is_refused_naming_the_keyword(canary_files: list[bytes], tag, keyword, code) -> None:
    files = list(canary_files)
    files[3] = _with_broken_vr(files[3], tag)
    with pytest.raises(IngestionError) as info:
        load_series(files)
    assert info.value.code is code
    assert keyword in info.value.message
    assert info.value.details.get("attribute") == keyword


def test_non_transfer_syntax_uid_is_unsupported_transfer_syntax(canary_files: list[bytes]) -> None:
    explicit_le = b"1.2.840.10008.1.2.1\x00"  # file meta TransferSyntaxUID, rewritten with the same length
    assert explicit_le in canary_files[0]
    damaged = canary_files[0].replace(explicit_le, b"1.2.840.10008.5.1.4\x00", 1)
    files = [damaged, *canary_files[1:]]
    with pytest.raises(IngestionError) as info:
        load_series(files)
    assert info.value.code is RefusalCode.UNSUPPORTED_TRANSFER_SYNTAX


def test_damaged_deflate_member_is_archive_invalid(canary_files: list[bytes]) -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, data in enumerate(canary_files):
            zf.writestr(f"{i}.dcm", data)
    body = bytearray(buf.getvalue())
    body[60:90] = bytes(30)  # inside the first member's deflate stream
    report = inspect_inputs([bytes(body)])
    assert report["refusal"]["code"] == "archive_invalid"


def test_pydicom_log_records_are_redacted(canary_files: list[bytes]) -> None:
    """No element values in logs: a damaged UI value makes pydicom log the raw bytes that follow (the patient
    module included)."""
    data = bytearray(canary_files[0])
    pos = data.find(b"\x08\x00\x16\x00UI")  # SOPClassUID: a long length swallows the following elements
    data[pos + 6] = 0xF2
    handler = _Records()
    logging.getLogger("pydicom").addHandler(handler)
    try:
        inspect_inputs([bytes(data), *canary_files[1:]])
    finally:
        logging.getLogger("pydicom").removeHandler(handler)
    assert not _leaks(handler.texts), _leaks(handler.texts)


def test_files_are_not_needed_on_disk(tmp_path: Path, canary_files: list[bytes]) -> None:
    """Control: the undamaged canary series is accepted from bytes, so the refusals above come from damage."""
    series = load_series(canary_files)
    assert series.image.GetSize() == (48, 48, 8)
