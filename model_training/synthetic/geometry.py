"""Shared geometry helpers for the phantoms: the image grid, head-frame coordinates, smooth level sets and the
analytic partial-volume model.

Conventions: world coordinates are DICOM patient coordinates (LPS, mm: +x patient left, +y posterior,
+z superior). Arrays are indexed (z, y, x) = (slice, row, column). Axial slices have identity orientation
(rows run along +x, columns along +y), so voxel (k, j, i) sits at ``origin + (i*ps, j*ps, k*dz)``.
The head frame (u, v, w) is the world frame rotated by the head pose and centred on the head centre:
u = left-right, v = anterior(-)/posterior(+), w = inferior(-)/superior(+).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PSF_WIDTH_MM = 1.0  # in-plane edge width of the reconstruction (ramp width, mm)


@dataclass(frozen=True)
class Grid:
    """A regular axial grid: shape (z, y, x), spacing (dz, dy, dx) in mm, origin = centre of voxel (0, 0, 0) in LPS."""

    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]

    def axes(self, box: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (float32) of the voxel centres along z, y, x, optionally restricted to ``box``."""
        out = []
        for ax, (n, sp) in enumerate(zip(self.shape, self.spacing_zyx, strict=True)):
            o = self.origin_xyz[2 - ax]
            idx = np.arange(n, dtype=np.float32)
            if box is not None:
                idx = idx[box[ax]]
            out.append((o + idx * sp).astype(np.float32))
        return out[0], out[1], out[2]

    def box_around(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[slice, slice, slice]:
        """Index box (z, y, x slices) covering the world-space axis-aligned box [lo, hi], clipped to the grid."""
        sl = []
        for ax in range(3):
            o, sp, n = self.origin_xyz[2 - ax], self.spacing_zyx[ax], self.shape[ax]
            a = int(np.floor((lo_xyz[2 - ax] - o) / sp)) - 1
            b = int(np.ceil((hi_xyz[2 - ax] - o) / sp)) + 2
            sl.append(slice(max(a, 0), min(max(b, 0), n)))
        return sl[0], sl[1], sl[2]


def head_frame(grid: Grid, box: tuple[slice, slice, slice], centre: np.ndarray, rotation: np.ndarray):
    """Head-frame coordinates (u, v, w), each float32 of the box's shape: ``u = R^T (p - centre)``."""
    z, y, x = grid.axes(box)
    dz = (z - centre[2])[:, None, None]
    dy = (y - centre[1])[None, :, None]
    dx = (x - centre[0])[None, None, :]
    r = rotation.astype(np.float32)
    u = dx * r[0, 0] + dy * r[1, 0] + dz * r[2, 0]
    v = dx * r[0, 1] + dy * r[1, 1] + dz * r[2, 1]
    w = dx * r[0, 2] + dy * r[1, 2] + dz * r[2, 2]
    return u, v, w


def rotation_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Head pose: rotation about z (yaw), then x (pitch, nodding) and y (roll); columns are the head axes in LPS."""
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def ellipsoid_distance(u, v, w, semi_u, semi_v, semi_w):
    """Approximate signed distance (mm, negative inside) to an ellipsoid in its own frame, and the unit normal's
    w-component. ``semi_*`` may be arrays (piecewise ellipsoids). First-order: ``(q - 1) / |grad q|``, exact on
    the surface and accurate within a few centimetres of it for head-like eccentricities."""
    gu = u / (semi_u * semi_u)
    gv = v / (semi_v * semi_v)
    gw = w / (semi_w * semi_w)
    q = np.sqrt(u * gu + v * gv + w * gw) + np.float32(1e-6)
    gnorm = np.sqrt(gu * gu + gv * gv + gw * gw) + np.float32(1e-9)
    d = (q - 1.0) * q / gnorm
    return d.astype(np.float32, copy=False), (gw / gnorm).astype(np.float32, copy=False)


def ramp_width(nz: np.ndarray | float, slice_thickness_mm: float) -> np.ndarray | float:
    """Edge width (mm) of the partial-volume ramp: a planar boundary whose normal has z-component ``nz`` sweeps
    ``thickness * |nz|`` mm of signed distance across one slab; the in-plane PSF adds ``PSF_WIDTH_MM``."""
    return np.sqrt(np.float32(PSF_WIDTH_MM**2) + (np.float32(slice_thickness_mm) * nz) ** 2)


def inside_fraction(d: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """Volume fraction of a voxel inside the level set ``d < 0`` (linear ramp of the given width, mm)."""
    out = d / width
    np.subtract(np.float32(0.5), out, out=out)
    return np.clip(out, 0.0, 1.0, out=out)
