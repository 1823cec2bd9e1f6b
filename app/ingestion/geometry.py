"""Slice ordering, duplicates, gantry tilt, uneven spacing and the SimpleITK volume (LPS, mm).

Conventions: ``r`` and ``c`` are the row and column direction cosines of ImageOrientationPatient (r points along a
row, i.e. increasing column index = image x; c along a column = image y), ``n = r x c`` is the slice normal.
A slice's distance along the normal is ``d = IPP . n``; slices are ordered by ``d`` (never InstanceNumber).
The output volume has direction columns ``(r, c, n)``, spacing ``(PixelSpacing[1], PixelSpacing[0], dz)`` and
is indexed (z, y, x) as a numpy array.

Gantry tilt is detected from geometry alone: the in-plane offset of each slice's IPP from the first one
(``(IPP_k - IPP_0) . r`` and ``. c``) is zero for an orthogonal stack and grows linearly with ``d`` under tilt;
the tilt angle is ``atan(|in-plane offset| / d-range)``. Any in-plane offset larger than a tenth of a pixel, or
spacing along the normal that deviates from the median by more than ``max(1 %, 0.05 mm)``, triggers resampling
onto an orthogonal grid: every source slice is first shifted in-plane onto a common grid (bilinear with
SimpleITK's edge rules, as two vectorised 1D passes; the grid covers the union of all slices, outside is air),
then slices are linearly interpolated along the normal onto planes spaced by the median spacing. A gap larger
than twice the median spacing is missing data (refused).

One 3D ``sitk.Resample`` of the sheared stack (non-orthogonal direction matrix) gives the same volume for evenly
spaced tilted series but is slower (ITK takes its general per-point path for mismatched directions) and cannot
express uneven spacing (measurements: bench/README.md).

Duplicate slices at one position are dropped or refused by the position rule of
:class:`~app.ingestion.duplicates.Duplicates` after ordering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from app.errors import IngestionError, QualityWarning, RefusalCode, WarningCode
from app.ingestion.attributes import refuse_parse_errors
from app.ingestion.duplicates import Duplicates
from app.ingestion.reading import AIR_HU, Instance
from app.ingestion.series import orientation_of, pixel_spacing_of, position_of, sop_instance_uid
from app.ingestion.types import SourceSlice

SPACING_REL_TOLERANCE = 0.01
SPACING_ABS_TOLERANCE_MM = 0.05
MAX_GAP_FACTOR = 2.0
SHIFT_TOLERANCE_PX = 0.1
MAX_GRID_GROWTH = 4.0  # resampled grid may hold at most this many times the acquired voxels


@dataclass
class Volume:
    image: sitk.Image
    slices: list[SourceSlice]
    instances: list[Instance]  # in volume order, after duplicate removal
    resampled: bool
    warnings: list[QualityWarning]  # gantry tilt / uneven spacing resampling (duplicates: see Duplicates)


def _inconsistent(message: str, **details: object) -> IngestionError:
    return IngestionError(RefusalCode.INCONSISTENT_GEOMETRY, message, dict(details))


def _unit_axes(orientation: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.asarray(orientation[:3], dtype=np.float64)
    c = np.asarray(orientation[3:], dtype=np.float64)
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if not (abs(nr - 1) < 1e-2 and abs(nc - 1) < 1e-2):
        raise _inconsistent("ImageOrientationPatient does not hold unit vectors.")
    r, c = r / nr, c / nc
    if abs(float(r @ c)) > 1e-2:
        raise _inconsistent("ImageOrientationPatient row and column directions are not orthogonal.")
    c = c - (r @ c) * r  # remove rounding residue so that (r, c, n) is orthonormal
    c /= np.linalg.norm(c)
    return r, c, np.cross(r, c)


def _position(inst: Instance) -> np.ndarray:
    ipp = position_of(inst)
    if ipp is None:
        raise _inconsistent("An image lacks a valid ImagePositionPatient.")
    return np.asarray(ipp, dtype=np.float64)


def require_slices(n_slices: int, min_slices: int) -> None:
    """Refuse ``too_few_slices`` when a volume has fewer than ``min_slices`` distinct axial slices."""
    if n_slices < min_slices:
        raise IngestionError(
            RefusalCode.TOO_FEW_SLICES,
            f"The series has {n_slices} distinct slice(s); at least {min_slices} are required.",
            {"n_slices": n_slices, "min_slices": min_slices},
        )


def _shift_axis(arr: np.ndarray, axis: int, shift_px: float, n_out: int) -> np.ndarray:
    """Linear interpolation of ``arr`` along ``axis`` at input indices ``u = i - shift_px``, ``i < n_out``.

    SimpleITK's conventions (``LinearInterpolateImageFunction``): taps beyond the edge are clamped to it, and
    samples outside ``-0.5 <= u <= n_in - 0.5`` are air. The shift is the same for every sample, so the taps
    are two contiguous windows of the edge-padded array with one scalar weight.
    """
    n_in = arr.shape[axis]
    lower = math.floor(-shift_px)  # tap of sample i is i + lower
    frac = np.float32(-shift_px - lower)
    before = max(0, -lower)
    after = max(0, lower + n_out + 1 - n_in)
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (before, after)
    padded = np.pad(arr, pad, mode="edge") if before or after else arr
    start = lower + before

    def window(offset: int) -> np.ndarray:
        index = [slice(None)] * arr.ndim
        index[axis] = slice(start + offset, start + offset + n_out)
        return padded[tuple(index)]

    out = window(0) * (np.float32(1.0) - frac)
    if frac:
        out += window(1) * frac
    i = np.arange(n_out)
    outside = (i - shift_px < -0.5) | (i - shift_px > n_in - 0.5)
    if outside.any():
        index = [slice(None)] * arr.ndim
        index[axis] = outside  # type: ignore[call-overload]
        out[tuple(index)] = AIR_HU
    return out


def _shift_in_plane(hu: np.ndarray, shift_xy_px: tuple[float, float], size_xy: tuple[int, int]) -> np.ndarray:
    """Translate one slice (y, x) by ``shift_xy_px`` pixels onto a ``size_xy`` grid with bilinear interpolation;
    samples outside the slice are air. A translation keeps bilinear interpolation separable: two 1D passes,
    numerically ``sitk.Resample(..., sitkLinear, AIR_HU)`` of the shifted slice (same clamping and inside
    rule) and several times faster than it."""
    rows = _shift_axis(hu.astype(np.float32, copy=False), 1, shift_xy_px[0], size_xy[0])
    return _shift_axis(rows, 0, shift_xy_px[1], size_xy[1])


def _resample_slicewise(
    ordered: list[Instance],
    a: np.ndarray,
    b: np.ndarray,
    d: np.ndarray,
    spacing_xy: tuple[float, float],
    corner_ab: tuple[float, float],
    size_xy: tuple[int, int],
    dz: float,
    n_out: int,
) -> np.ndarray:
    """Shift every slice in-plane onto the common grid (corner ``corner_ab``, mm along r and c; bilinear), then
    interpolate linearly along the normal onto planes ``dz`` apart (float32, z-y-x)."""
    width, height = size_xy
    rows, cols = ordered[0].hu.shape  # type: ignore[union-attr]
    a0, b0 = corner_ab
    shifted = [
        inst.hu if (width == cols and height == rows and abs(a[k] - a0) < 1e-6 and abs(b[k] - b0) < 1e-6)
        else _shift_in_plane(inst.hu, ((a[k] - a0) / spacing_xy[0], (b[k] - b0) / spacing_xy[1]),  # type: ignore[arg-type]
                             size_xy)
        for k, inst in enumerate(ordered)
    ]
    targets = d[0] + dz * np.arange(n_out)
    volume = np.empty((n_out, height, width), dtype=np.float32)
    upper = np.clip(np.searchsorted(d, targets, side="left"), 1, len(d) - 1)
    for j, t in enumerate(targets):
        k1 = int(upper[j])
        k0 = k1 - 1
        w = float(np.clip((t - d[k0]) / (d[k1] - d[k0]), 0.0, 1.0))
        np.multiply(shifted[k0], 1.0 - w, out=volume[j])
        volume[j] += w * shifted[k1]
    return volume


def build_volume(
    instances: list[Instance],
    min_slices: int,
    default_spacing_mm: float | None = None,
    duplicates: Duplicates | None = None,
) -> Volume:
    """Order, de-duplicate and stack decoded instances (``hu`` filled) of one candidate into an LPS volume.

    ``default_spacing_mm`` gives the z spacing of a single-slice volume (SliceThickness, else 1 mm). Slices at
    an already present position are handled by ``duplicates`` (the caller's tally; a fresh one when None), which
    also reports them: ``Volume.warnings`` holds the resampling warnings only. A parse error of the client data
    is refused as ``corrupt_pixel_data``.
    """
    with refuse_parse_errors(RefusalCode.CORRUPT_PIXEL_DATA):
        return _build_volume(instances, min_slices, default_spacing_mm,
                             duplicates if duplicates is not None else Duplicates())


def _build_volume(
    instances: list[Instance], min_slices: int, default_spacing_mm: float | None, duplicates: Duplicates
) -> Volume:
    first = instances[0]
    orientation = orientation_of(first)
    if orientation is None:
        raise _inconsistent("The series lacks a valid ImageOrientationPatient.")
    r, c, n = _unit_axes(orientation)
    spacing_rc = [pixel_spacing_of(i) for i in instances]
    if any(s is None for s in spacing_rc):
        raise _inconsistent("An image lacks a valid PixelSpacing.")
    if any(abs(s[0] - spacing_rc[0][0]) > 1e-4 or abs(s[1] - spacing_rc[0][1]) > 1e-4 for s in spacing_rc):
        raise _inconsistent("PixelSpacing differs between images of the series.")
    row_spacing, col_spacing = spacing_rc[0]
    if row_spacing <= 0 or col_spacing <= 0:
        raise _inconsistent("PixelSpacing is not positive.")
    rows, cols = first.hu.shape  # type: ignore[union-attr]

    positions = np.stack([_position(i) for i in instances])
    d = positions @ n
    order = np.argsort(d, kind="stable")
    ordered = [instances[k] for k in order]
    ordered, positions = duplicates.drop_same_position(ordered, positions[order])
    d = positions @ n
    warnings: list[QualityWarning] = []
    require_slices(len(ordered), min_slices)

    a = positions @ r
    b = positions @ c
    steps = np.diff(d)
    resample = False
    dz: float
    if len(ordered) == 1:
        dz = float(default_spacing_mm) if default_spacing_mm and default_spacing_mm > 0 else 1.0
    else:
        median = float(np.median(steps))
        if median <= 0:
            raise _inconsistent("Slice positions do not advance along the slice normal.")
        largest = float(steps.max())
        if largest > MAX_GAP_FACTOR * median:
            k = int(steps.argmax())
            raise IngestionError(
                RefusalCode.MISSING_SLICES,
                f"Slices are missing: a gap of {largest:.2f} mm between slices {k} and {k + 1} exceeds twice "
                f"the median spacing of {median:.2f} mm.",
                {"gap_mm": round(largest, 3), "median_spacing_mm": round(median, 3), "after_slice": k},
            )
        tolerance = max(SPACING_REL_TOLERANCE * median, SPACING_ABS_TOLERANCE_MM)
        uneven = bool(np.any(np.abs(steps - median) > tolerance))
        shift = np.hypot(a - a[0], b - b[0])
        tilted = bool(shift.max() > SHIFT_TOLERANCE_PX * min(row_spacing, col_spacing))
        if uneven:
            dz = median
            warnings.append(QualityWarning(
                WarningCode.NON_UNIFORM_SPACING_RESAMPLED,
                f"Slice spacing varies from {steps.min():.2f} to {largest:.2f} mm; the series was resampled "
                f"to {median:.2f} mm along the slice normal.",
                {"min_spacing_mm": round(float(steps.min()), 3), "max_spacing_mm": round(largest, 3),
                 "output_spacing_mm": round(median, 4)},
            ))
        else:
            dz = float((d[-1] - d[0]) / (len(d) - 1))
        if tilted:
            extent = float(d[-1] - d[0])
            angle = math.degrees(math.atan2(float(shift.max()), extent)) if extent > 0 else 90.0
            warnings.append(QualityWarning(
                WarningCode.GANTRY_TILT_CORRECTED,
                f"The slices are sheared by a gantry tilt of about {angle:.1f} degrees; the series was resampled "
                "onto an orthogonal grid.",
                {"tilt_deg": round(angle, 2)},
            ))
        resample = uneven or tilted

    sx, sy = col_spacing, row_spacing
    if not resample:
        volume = np.empty((len(ordered), rows, cols), dtype=np.float32)
        for k, inst in enumerate(ordered):
            volume[k] = inst.hu
        origin = positions[0]
    else:
        a0, b0 = float(a.min()), float(b.min())
        width = int(round((float(a.max()) + (cols - 1) * sx - a0) / sx)) + 1
        height = int(round((float(b.max()) + (rows - 1) * sy - b0) / sy)) + 1
        n_out = int(math.floor((d[-1] - d[0]) / dz + 1e-3)) + 1
        if width * height * n_out > MAX_GRID_GROWTH * rows * cols * len(ordered):
            # in-plane offsets far larger than any tilt: scattered positions, not a tilted acquisition
            raise _inconsistent(
                "The image positions are scattered too widely in-plane to form one volume.",
                grid_xyz=[width, height, n_out],
            )
        origin = a0 * r + b0 * c + d[0] * n
        volume = _resample_slicewise(ordered, a, b, d, (sx, sy), (a0, b0), (width, height), dz, n_out)

    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing((sx, sy, dz))
    image.SetDirection(tuple(float(v) for v in np.column_stack([r, c, n]).ravel()))
    slices = [
        SourceSlice(
            sop_instance_uid=sop_instance_uid(inst) or "",
            sop_class_uid=inst.sop_class_uid,
            position=tuple(float(v) for v in positions[k]),  # type: ignore[arg-type]
            row_direction=tuple(float(v) for v in r),  # type: ignore[arg-type]
            column_direction=tuple(float(v) for v in c),  # type: ignore[arg-type]
            pixel_spacing=(row_spacing, col_spacing),
            rows=rows,
            columns=cols,
        )
        for k, inst in enumerate(ordered)
    ]
    return Volume(image=image, slices=slices, instances=ordered, resampled=resample, warnings=warnings)
