"""Seeded mutations of a valid DICOM upload, for fuzzing the real HTTP endpoint.

Each mutator takes a ``random.Random`` and the list of file bytes of one valid series and returns a
:class:`FuzzCase`: a name, the request body (as httpx ``files`` parts or raw ``content`` + content type).
Mutations cover byte-level damage (truncation, bit flips, wrong VRs and element lengths, huge declared
lengths), dataset-level damage done with pydicom (missing or contradictory geometry and pixel attributes,
wrong transfer syntax UIDs, deeply nested sequences) and random ZIP structures. Everything is a pure
function of the seed, so a failing case is reproduced from its (seed, index).
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence


@dataclass
class FuzzCase:
    name: str
    files: list[bytes] = field(default_factory=list)  # multipart 'files' parts, when content is None
    content: bytes | None = None
    content_type: str = "application/zip"

    def request_kwargs(self) -> dict:
        if self.content is not None:
            return {"content": self.content, "headers": {"Content-Type": self.content_type}}
        return {"files": [("files", (f"f{i}.dcm", b, "application/dicom")) for i, b in enumerate(self.files)]}


def _pick(rng: random.Random, files: list[bytes]) -> list[int]:
    """Indices to damage: one file, a few, or all."""
    mode = rng.random()
    if mode < 0.4:
        return [rng.randrange(len(files))]
    if mode < 0.7:
        return rng.sample(range(len(files)), k=rng.randint(2, len(files)))
    return list(range(len(files)))


def _per_file(name: str, fn: Callable[[random.Random, bytes], bytes]) -> Callable[[random.Random, list[bytes]], FuzzCase]:
    def mutate(rng: random.Random, files: list[bytes]) -> FuzzCase:
        out = list(files)
        for i in _pick(rng, files):
            out[i] = fn(rng, out[i])
        return FuzzCase(name, files=out)

    mutate.__name__ = name
    return mutate


# --- byte level --------------------------------------------------------------------------------------------
def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(0, len(data))]


def _bit_flips(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    lo = 128 if rng.random() < 0.5 else 0
    hi = len(buf) if rng.random() < 0.3 else min(len(buf), 1200)  # mostly the header
    for _ in range(rng.randint(1, 32)):
        buf[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(buf)


_VR_TAGS = [(0x0020, 0x0032), (0x0020, 0x0037), (0x0028, 0x0030), (0x0028, 0x0010), (0x0028, 0x0011),
            (0x0028, 0x0100), (0x0028, 0x1052), (0x0028, 0x1053), (0x0008, 0x0060), (0x0020, 0x000E),
            (0x0002, 0x0010)]
_VRS = [b"US", b"SS", b"UL", b"FD", b"OB", b"OW", b"SQ", b"UN", b"DS", b"IS", b"CS", b"UI", b"XX", b"\0\0"]


def _find(data: bytes, tag: tuple[int, int]) -> int:
    return data.find(struct.pack("<HH", *tag))


def _wrong_vr(rng: random.Random, data: bytes) -> bytes:
    pos = _find(data, rng.choice(_VR_TAGS))
    if pos < 0:
        return data
    return data[: pos + 4] + rng.choice(_VRS) + data[pos + 6:]


def _wrong_length(rng: random.Random, data: bytes) -> bytes:
    pos = _find(data, rng.choice(_VR_TAGS))
    if pos < 0:
        return data
    length = rng.choice([0, 1, 3, 0x7FFF, 0xFFFF, rng.randrange(0x10000)])
    return data[: pos + 6] + struct.pack("<H", length) + data[pos + 8:]


def _huge_length(rng: random.Random, data: bytes) -> bytes:
    """Declare a 4-byte length of ~4 GiB on Pixel Data (OW) or an undefined length where none is allowed."""
    pos = _find(data, (0x7FE0, 0x0010))
    if pos < 0:
        return data
    length = rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0xFFFFFFFF, len(data) * 1000, 1])
    return data[: pos + 8] + struct.pack("<I", length) + data[pos + 12:]


# --- dataset level (pydicom) ------------------------------------------------------------------------------
def _edit(fn: Callable[[random.Random, Dataset], None]) -> Callable[[random.Random, bytes], bytes]:
    def apply(rng: random.Random, data: bytes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(data))
        fn(rng, ds)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue()

    return apply


def _geometry(rng: random.Random, ds: Dataset) -> None:
    choice = rng.randrange(9)
    if choice == 0:
        del ds.ImagePositionPatient
    elif choice == 1:
        del ds.ImageOrientationPatient
    elif choice == 2:
        del ds.PixelSpacing
    elif choice == 3:
        ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]  # degenerate (parallel) axes
    elif choice == 4:
        ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    elif choice == 5:
        ds.PixelSpacing = [rng.choice(["0", "-1", "NaN", "1e308"]), "0.5"]
    elif choice == 6:
        ds.ImagePositionPatient = [0, 0, rng.choice(["NaN", "inf", "1e300"])]
    elif choice == 7:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    else:
        ds.ImagePositionPatient = [rng.uniform(-500, 500) for _ in range(3)]  # scattered positions


def _pixel_attrs(rng: random.Random, ds: Dataset) -> None:
    choice = rng.randrange(8)
    if choice == 0:
        ds.Rows = rng.choice([0, 1, ds.Rows * 2, 65535])
    elif choice == 1:
        ds.Columns = rng.choice([0, ds.Columns + 1, 65535])
    elif choice == 2:
        ds.BitsAllocated = rng.choice([1, 8, 12, 32, 64])
    elif choice == 3:
        ds.SamplesPerPixel = 3
    elif choice == 4:
        ds.PhotometricInterpretation = rng.choice(["RGB", "PALETTE COLOR", "YBR_FULL", "BOGUS"])
    elif choice == 5:
        ds.RescaleSlope = rng.choice(["0", "-1", "NaN", "1e30"])
    elif choice == 6:
        del ds.PixelData
    else:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


_TS_UIDS = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.100", "1.2.3.4.5.6.7", "", "not-a-uid"]


def _transfer_syntax(rng: random.Random, data: bytes) -> bytes:
    """Rewrite the file meta TransferSyntaxUID without re-encoding the dataset (a lying header)."""
    pos = _find(data, (0x0002, 0x0010))
    if pos < 0:
        return data
    (old_len,) = struct.unpack("<H", data[pos + 6: pos + 8])
    uid = rng.choice(_TS_UIDS).encode()
    uid = uid + (b"\0" if len(uid) % 2 else b"")
    new = data[: pos + 6] + struct.pack("<H", len(uid)) + uid + data[pos + 8 + old_len:]
    # keep the group length consistent half of the time; a wrong group length is itself a mutation
    if rng.random() < 0.5:
        glen = _find(new, (0x0002, 0x0000))
        if glen >= 0:
            (value,) = struct.unpack("<I", new[glen + 8: glen + 12])
            new = new[: glen + 8] + struct.pack("<I", value + len(uid) - old_len) + new[glen + 12:]
    return new


def _nested(rng: random.Random, ds: Dataset) -> None:
    depth = rng.choice([8, 64, 200])
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedImageSequence = DicomSequence([inner])
        inner = outer
    ds.ReferencedImageSequence = DicomSequence([inner] * rng.randint(1, 3))


# --- archives ------------------------------------------------------------------------------------------------
def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def random_zip(rng: random.Random, files: list[bytes]) -> FuzzCase:
    """Random archive structure: odd names, duplicates, directories, nesting, damage to the ZIP bytes."""
    members: list[tuple[str, bytes]] = []
    for i, data in enumerate(files):
        name = rng.choice([f"s/{i}.dcm", f"{i}", f"../../{i}.dcm", f"/abs/{i}.dcm", f"a/{'b/' * 30}{i}",
                           f"C:\\x\\{i}.dcm", "dup.dcm", f"{i}\x00.dcm"])
        members.append((name, data))
    if rng.random() < 0.3:
        members.append(("dir/", b""))
    if rng.random() < 0.3:
        members.append(("readme.txt", b"not dicom"))
    rng.shuffle(members)
    body = _zip(members, rng.choice([zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED]))
    if rng.random() < 0.3:
        body = _zip([("inner.zip", body)])
        if rng.random() < 0.5:
            body = _zip([("inner2.zip", body)])
    damage = rng.random()
    if damage < 0.25:
        body = body[: rng.randrange(4, len(body))]
    elif damage < 0.5:
        buf = bytearray(body)
        for _ in range(rng.randint(1, 16)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        body = bytes(buf)
    return FuzzCase("random_zip", content=body, content_type="application/zip")


def stow_mangled(rng: random.Random, files: list[bytes]) -> FuzzCase:
    """A STOW-RS body with random structural damage (missing final boundary, bad part headers)."""
    boundary = "fz" + "".join(rng.choice("abcdef0123") for _ in range(8))
    parts = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    choice = rng.randrange(4)
    if choice == 0:
        body = body[: rng.randrange(len(body))]
    elif choice == 1:
        body = body.replace(b"Content-Type: application/dicom\r\n", b"Content-Type\r\n", 1)
    elif choice == 2:
        boundary = boundary + "x"  # declared boundary never occurs
    else:
        body = body.replace(b"\r\n\r\n", b"\n", 1)
    return FuzzCase("stow_mangled", content=body,
                    content_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


MUTATORS: list[Callable[[random.Random, list[bytes]], FuzzCase]] = [
    _per_file("truncate", _truncate),
    _per_file("bit_flips", _bit_flips),
    _per_file("wrong_vr", _wrong_vr),
    _per_file("wrong_length", _wrong_length),
    _per_file("huge_length", _huge_length),
    _per_file("geometry", _edit(_geometry)),
    _per_file("pixel_attributes", _edit(_pixel_attrs)),
    _per_file("transfer_syntax", _transfer_syntax),
    _per_file("nested_sequences", _edit(_nested)),
    random_zip,
    stow_mangled,
]


def make_case(seed: int, index: int, files: list[bytes]) -> FuzzCase:
    """Case ``index`` of the campaign ``seed``: mutators are taken round-robin, parameters from the seed."""
    rng = random.Random(seed * 1_000_003 + index)
    mutator = MUTATORS[index % len(MUTATORS)]
    case = mutator(rng, files)
    case.name = f"{case.name}[{seed}:{index}]"
    return case
