"""Crafted edge cases of the foundation issue (tests/dicom_factory.py) through the API, each with its expected
outcome: the chosen series and the quality warnings for accepted inputs, the refusal code for the others.

The series are written with pydicom as real DICOM files: 48 x 48 axial slices of 4 mm pixels (a 192 mm field
of view, LPS), 5 mm apart, holding a head phantom (skull 1000 HU, brain 35 HU, a 65 HU haematoma) so that the
service's skull stripping finds a brain and the accepted cases really reach the model.
Budget: about 20 s (one request per case on the session server).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicom_factory import make_ct_dataset, save, write_ct_series
from pydicom.uid import generate_uid

from .harness import FaultServer, check_answer

ROWS = COLS = 48
PIXEL_MM = 4.0
ORIGIN = (-96.0, -96.0, 0.0)
N_SLICES = 12


def head_phantom(centre_z: float) -> Callable[[np.ndarray], np.ndarray]:
    """HU at LPS points (..., 3) in mm: an ellipsoidal head (semi-axes 70, 85, 70 mm) centred at
    (0, 0, ``centre_z``), 6 mm of skull, and a 15 mm haematoma."""

    def hu_at(p: np.ndarray) -> np.ndarray:
        x, y, z = p[..., 0], p[..., 1], p[..., 2] - centre_z
        r = np.sqrt((x / 70.0) ** 2 + (y / 85.0) ** 2 + (z / 70.0) ** 2)
        hu = np.full(r.shape, -1000.0)
        hu[r < 1.0] = 1000.0
        hu[r < 0.92] = 35.0
        hu[((x - 20.0) ** 2 + (y + 10.0) ** 2 + z**2 < 15.0**2) & (r < 0.92)] = 65.0
        return hu

    return hu_at


def series(d: Path, **kwargs: object) -> list[Path]:
    """A head series (keyword arguments as :func:`dicom_factory.write_ct_series`)."""
    n = int(kwargs.pop("n_slices", N_SLICES))  # type: ignore[call-overload]
    spacing = float(kwargs.pop("spacing", 5.0))  # type: ignore[arg-type]
    return write_ct_series(d, n_slices=n, rows=ROWS, cols=COLS, pixel_spacing=(PIXEL_MM, PIXEL_MM),
                           spacing=spacing, origin=ORIGIN, hu_at=head_phantom(spacing * (n - 1) / 2),
                           **kwargs)  # type: ignore[arg-type]


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


# --- accepted: (files, form fields, expected chosen series uid or None, expected warning codes) ----------------
def tilted(d: Path) -> tuple[list[Path], dict, str, set[str]]:
    p = series(d, tilt_deg=15.0)
    return p, {}, _uid(p[0]), {"gantry_tilt_corrected"}


def non_uniform(d: Path) -> tuple[list[Path], dict, str, set[str]]:
    p = series(d, positions_mm=[0, 4, 8, 12, 16, 23, 30, 37, 44, 51, 58, 65])
    return p, {}, _uid(p[0]), {"non_uniform_spacing_resampled"}


def duplicates(d: Path) -> tuple[list[Path], dict, str, set[str]]:
    p = series(d)
    shutil.copy(p[3], d / "copy_of_3")
    resent = pydicom.dcmread(p[5])  # same position and pixels, new SOP instance UID: a resend
    resent.SOPInstanceUID = resent.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return [*p, d / "copy_of_3", save(resent, d / "resent_5")], {}, _uid(p[0]), {"duplicates_removed"}


def scout_and_secondary_capture(d: Path) -> tuple[list[Path], dict, str, set[str]]:
    p = series(d)
    img = np.zeros((32, 48))
    scout = make_ct_dataset(img, position=(0, -100, 200), orientation=(0, 1, 0, 0, 0, -1), series_uid=_uid(p[0]),
                            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    sc = make_ct_dataset(img, position=(0, 0, 0), sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                         image_type=("DERIVED", "SECONDARY"))
    return [*p, save(scout, d / "scout"), save(sc, d / "sc")], {}, _uid(p[0]), {"skipped_objects"}


def two_series_chosen_by_rules(d: Path) -> tuple[list[Path], dict, str, set[str]]:
    thin = series(d / "thin", spacing=2.5, series_description="THIN")
    five = series(d / "five", series_description="FIVE")
    return [*thin, *five], {}, _uid(five[0]), {"series_chosen_automatically"}  # equal counts: closest to 5 mm


def two_series_one_named(d: Path) -> tuple[list[Path], dict, str, set[str]]:
    a = series(d / "a", series_description="A")
    b = series(d / "b", series_description="B")
    return [*a, *b], {"series_instance_uid": _uid(b[0])}, _uid(b[0]), set()


ACCEPTED = [tilted, non_uniform, duplicates, scout_and_secondary_capture, two_series_chosen_by_rules,
            two_series_one_named]


# --- refused: (files, form fields) and the expected "<status>:<code>" --------------------------------------
def _edit(path: Path, fn: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    fn(ds)
    save(ds, path)


def _conflicting(d: Path) -> list[Path]:
    p = series(d, n_slices=6)
    ds = pydicom.dcmread(p[2])
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return [*p, save(ds, d / "modified")]


def _corrupt(d: Path) -> list[Path]:
    p = series(d, n_slices=6)
    _edit(p[2], lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]))
    return p


def _inconsistent(d: Path) -> list[Path]:
    p = series(d, n_slices=6)
    _edit(p[2], lambda ds: delattr(ds, "ImagePositionPatient"))
    return p


REFUSED: dict[str, tuple[Callable[[Path], list[Path]], dict, str]] = {
    "missing_slices": (lambda d: series(d, gaps=[5, 6]), {}, "422:missing_slices"),
    "too_few_slices": (lambda d: series(d, n_slices=2), {}, "422:too_few_slices"),
    "not_ct": (lambda d: series(d, modality="MR"), {}, "422:not_ct"),
    "not_axial": (lambda d: series(d, orientation=(0, 1, 0, 0, 0, -1)), {}, "422:not_axial"),
    "ambiguous_series": (lambda d: [*series(d / "a", series_description="A"),
                                    *series(d / "b", series_description="B")], {}, "422:ambiguous_series"),
    "series_not_found": (lambda d: series(d), {"series_instance_uid": "1.2.3.4"}, "422:series_not_found"),
    "conflicting_duplicates": (_conflicting, {}, "422:conflicting_duplicates"),
    "corrupt_pixel_data": (_corrupt, {}, "422:corrupt_pixel_data"),
    "inconsistent_geometry": (_inconsistent, {}, "422:inconsistent_geometry"),
    "only_scouts": (lambda d: [save(make_ct_dataset(np.zeros((16, 16)), position=(0, 0, 0),
                                                    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), d / "s")],
                    {}, "422:no_image_series"),
}


def _post(server: FaultServer, paths: list[Path], data: dict) -> httpx.Response:
    files = [("files", (f"part{i}.dcm", p.read_bytes(), "application/dicom")) for i, p in enumerate(paths)]
    return httpx.post(f"{server.base_url}/v1/predictions", files=files, data=data, timeout=60)


@pytest.mark.parametrize("build", ACCEPTED, ids=[f.__name__ for f in ACCEPTED])
def test_crafted_accepted(build: Callable, server: FaultServer, tmp_path: Path) -> None:
    paths, data, chosen_uid, warnings = build(tmp_path)
    r = _post(server, paths, data)
    assert check_answer(r) == "200", r.text[:500]
    body = r.json()["input"]
    assert body["series_instance_uid"] == chosen_uid
    assert warnings <= {w["code"] for w in body["warnings"]}, body["warnings"]
    assert body["slice_count"] == N_SLICES


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_crafted_refused(case: str, server: FaultServer, tmp_path: Path) -> None:
    build, data, expected = REFUSED[case]
    (tmp_path / "in").mkdir()
    r = _post(server, build(tmp_path / "in"), data)
    assert check_answer(r) == expected, r.text[:500]


def test_upload_order_does_not_matter(server: FaultServer, tmp_path: Path) -> None:
    """The same series posted in acquisition order and reversed gives the identical probability and volume."""
    paths = series(tmp_path, shuffle_names=False)
    a, b = _post(server, paths, {}).json(), _post(server, paths[::-1], {}).json()
    assert a["expansion"]["raw_probability"] == b["expansion"]["raw_probability"]
    assert a["expansion"]["probability"] == b["expansion"]["probability"]
    assert a["haematoma"] == b["haematoma"]
