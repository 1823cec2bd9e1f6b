"""Real NIfTI-1 files for the tests, written with SimpleITK (LPS geometry; SimpleITK stores RAS in the header).

:func:`write_phantom_nifti` writes the HU phantom of :func:`service_fixtures.phantom_volume` on exactly the grid
that :func:`service_fixtures.write_phantom_series` gives the DICOM series of the same phantom, so a NIfTI upload
and a DICOM upload of one phantom can be compared number for number. The other writers make the files that the
NIfTI refusals are about (4D, not HU, truncated, no orientation). Arrays are z-y-x, spacing x-y-z in mm.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from service_fixtures import phantom_volume


def write_volume(path: Path, array_zyx: np.ndarray, spacing_xyz: Sequence[float] = (1.0, 1.0, 5.0),
                 origin_lps: Sequence[float] = (0.0, 0.0, 0.0),
                 direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """``array_zyx`` as a NIfTI file (``.nii`` or ``.nii.gz`` by the name) with the given LPS geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(tuple(float(v) for v in spacing_xyz))
    image.SetOrigin(tuple(float(v) for v in origin_lps))
    image.SetDirection(tuple(float(v) for v in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def phantom_geometry(n_slices: int, size: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(spacing x-y-z mm, origin LPS mm) of :func:`service_fixtures.write_phantom_series`' DICOM series."""
    _, _, px, dz = phantom_volume(1, size)
    origin = (-(size - 1) / 2 * px, -(size - 1) / 2 * px, -(n_slices - 1) / 2 * dz)
    return (px, px, dz), origin


def write_phantom_nifti(path: Path, *, n_slices: int = 20, size: int = 96, seed: int = 0) -> Path:
    """The HU phantom (int16) on the grid of the DICOM phantom series with the same arguments."""
    hu, _, _, _ = phantom_volume(n_slices, size, seed)
    spacing, origin = phantom_geometry(n_slices, size)
    return write_volume(path, hu, spacing, origin)


def write_four_d(path: Path, n_volumes: int = 2) -> Path:
    """A 4D series of ``n_volumes`` copies of a small HU phantom."""
    hu, _, px, dz = phantom_volume(6, 32)
    frames = [sitk.GetImageFromArray(hu) for _ in range(n_volumes)]
    for f in frames:
        f.SetSpacing((px, px, dz))
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


def write_not_hu(path: Path, kind: str) -> Path:
    """The phantom as a volume that is not CT HU: ``"mr"`` (non-negative intensities, background 0),
    ``"normalised"`` (0-1) or ``"offset"`` (HU + 1024, stored without its rescale)."""
    hu, _, px, dz = phantom_volume(8, 48)
    hu = hu.astype(np.float32)
    if kind == "mr":
        array = np.where(hu < -500, 0.0, 600.0 + hu / 4).astype(np.float32)
    elif kind == "normalised":
        array = ((hu + 1024.0) / 4095.0).astype(np.float32)
    elif kind == "offset":
        array = (hu + 1024.0).astype(np.uint16)
    else:
        raise ValueError(kind)
    return write_volume(path, array, (px, px, dz))


def write_truncated(path: Path) -> Path:
    """A phantom ``.nii`` cut in half: a valid NIfTI header, too few voxel bytes."""
    full = write_phantom_nifti(path.with_name("full-" + path.name), n_slices=6, size=32)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def patch_header(path: Path, offset: int, fmt: str, *values: object) -> Path:
    """Overwrite header bytes of an uncompressed little-endian ``.nii`` (e.g. qform_code at 252)."""
    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack("<" + fmt, *values)
    path.write_bytes(bytes(data))
    return path
