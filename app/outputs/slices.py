"""Axial slices of the analysed series for a viewer: the HU volume kept compactly, orientation, positions, PNGs.

* :class:`SliceStack` keeps the HU volume of the analysis (original) grid as one zlib-compressed int16 buffer per
  axial slice (z-y-x order), so a stored result can serve any slice without holding the uncompressed volume. HU are
  clipped to :data:`DISPLAY_RANGE_HU`, the span of the display windows: every window shows a clipped volume exactly
  like the original, and the air, now one value, compresses to almost nothing.
* :func:`orientation_labels` names the patient directions (``R``/``L``, ``A``/``P``, ``S``/``I``) at the four
  edges of an axial slice displayed with row 0 at the top and column 0 at the left, from the grid's LPS direction
  cosines (SimpleITK order: column j of the row-major 3x3 matrix is index axis j).
* :func:`slice_positions_mm` gives each slice's position: the LPS z (superior) coordinate of its centre, mm.
* :func:`render_slice_png` windows one slice (:data:`WINDOWS`, HU), outlines the mask in red (its 4-connected
  inner edge, as in the overview) and corrects non-square pixels, as an 8-bit RGB PNG.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

#: display windows, (low, high) HU: brain (W 80 / L 40), blood (subdural, W 200 / L 80), bone (W 2000 / L 500)
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (0.0, 80.0),
    "blood": (-20.0, 180.0),
    "bone": (-500.0, 1500.0),
}
#: HU kept by :class:`SliceStack`: from the lowest window's low to the highest window's high end
DISPLAY_RANGE_HU: tuple[float, float] = (min(w[0] for w in WINDOWS.values()), max(w[1] for w in WINDOWS.values()))
_POSITIVE = ("L", "P", "S")  # LPS: +x is patient left, +y posterior, +z superior
_NEGATIVE = ("R", "A", "I")


@dataclass(frozen=True)
class SliceStack:
    """The HU volume (z, y, x) as zlib-compressed int16 slices; immutable, thread-safe."""

    shape_zyx: tuple[int, int, int]
    chunks: tuple[bytes, ...]

    @classmethod
    def from_hu(cls, hu: np.ndarray, level: int = 1) -> SliceStack:
        """From HU (z, y, x, any real dtype): rounded, clipped to :data:`DISPLAY_RANGE_HU`, each axial slice
        compressed (deflate ``level``)."""
        if hu.ndim != 3 or min(hu.shape) < 1:
            raise ValueError(f"expected a non-empty (z, y, x) volume, got {hu.shape}")
        chunks = []
        for plane in hu:
            values = np.clip(np.rint(plane), *DISPLAY_RANGE_HU).astype("<i2")
            chunks.append(zlib.compress(values.tobytes(), level))
        return cls(tuple(int(v) for v in hu.shape), tuple(chunks))  # type: ignore[arg-type]

    @property
    def depth(self) -> int:
        return self.shape_zyx[0]

    @property
    def nbytes(self) -> int:
        """Bytes held (the compressed slices plus a small per-slice overhead)."""
        return sum(len(c) for c in self.chunks) + 64 * len(self.chunks)

    def slice(self, k: int) -> np.ndarray:
        """HU (clipped to :data:`DISPLAY_RANGE_HU`) of axial slice ``k`` (0-based, ascending z) as int16 (y, x).
        Raises ``IndexError`` outside ``0..depth-1``."""
        if not 0 <= k < self.depth:
            raise IndexError(f"slice {k} outside 0..{self.depth - 1}")
        return np.frombuffer(zlib.decompress(self.chunks[k]), "<i2").reshape(self.shape_zyx[1:])


def direction_letter(vector: np.ndarray) -> str:
    """The patient direction (one of L, R, P, A, S, I) closest to ``vector`` (LPS)."""
    axis = int(np.argmax(np.abs(vector)))
    return _POSITIVE[axis] if vector[axis] >= 0 else _NEGATIVE[axis]


def orientation_labels(direction: tuple[float, ...]) -> dict[str, str]:
    """Patient directions at the ``left``, ``right``, ``top`` and ``bottom`` edges of an axial slice shown with
    row 0 at the top (``direction``: SimpleITK row-major 3x3 direction cosines). An LPS-aligned grid gives
    ``R`` left, ``L`` right, ``A`` top, ``P`` bottom (the radiological convention)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    x_dir, y_dir = d[:, 0], d[:, 1]
    return {"left": direction_letter(-x_dir), "right": direction_letter(x_dir),
            "top": direction_letter(-y_dir), "bottom": direction_letter(y_dir)}


def slice_positions_mm(shape_zyx: tuple[int, int, int], origin: tuple[float, float, float],
                       spacing: tuple[float, float, float], direction: tuple[float, ...]) -> list[float]:
    """LPS z (superior) coordinate, mm, of the centre of every axial slice; ``origin``/``spacing`` in SimpleITK
    order (x, y, z), ``direction`` row-major 3x3."""
    depth, rows, cols = shape_zyx
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    sx, sy, sz = spacing
    centre = np.asarray(origin, dtype=float) + d @ np.array([(cols - 1) / 2 * sx, (rows - 1) / 2 * sy, 0.0])
    return [round(float(centre[2] + k * sz * d[2, 2]), 3) for k in range(depth)]


def window_grey(hu: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """uint8 grey of ``hu`` in the window (low, high) HU: low and below black, high and above white."""
    lo, hi = window_hu
    if hi <= lo:
        raise ValueError(f"window {window_hu} must be (low, high) with low < high")
    return np.clip((hu.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The 4-connected inner edge of a 2-D mask (bool)."""
    from scipy import ndimage

    m = mask.astype(bool)
    if not m.any():
        return m
    return m & ~ndimage.binary_erosion(m, border_value=0)


def aspect_rows(rgb: np.ndarray, row_scale: float) -> np.ndarray:
    """Rows resampled (nearest neighbour) by ``row_scale`` = row spacing / column spacing, so that anatomy keeps
    its physical proportions."""
    if abs(row_scale - 1.0) <= 1e-3:
        return rgb
    n_rows = max(1, round(rgb.shape[0] * row_scale))
    src = np.minimum((np.arange(n_rows) + 0.5) / row_scale, rgb.shape[0] - 1).astype(np.intp)
    return rgb[src]


def render_slice_png(hu: np.ndarray, mask: np.ndarray | None, spacing_zyx: tuple[float, float, float], *,
                     window: str = "brain", text: dict[str, str] | None = None,
                     outline_rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    """PNG of one axial slice: ``hu`` (y, x, HU) in the named window of :data:`WINDOWS`, ``mask`` (y, x) outlined
    in ``outline_rgb``; rows scaled by spacing y / spacing x (mm). ``text``: PNG ``tEXt`` chunks."""
    from app.outputs.overlay import encode_png_rgb

    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}; one of {sorted(WINDOWS)}")
    grey = window_grey(hu, WINDOWS[window])
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if mask is not None:
        if mask.shape != hu.shape:
            raise ValueError(f"mask {mask.shape} and slice {hu.shape} differ")
        rgb[outline(mask)] = outline_rgb
    rgb = aspect_rows(rgb, float(spacing_zyx[1]) / float(spacing_zyx[2]))
    return encode_png_rgb(rgb, text={"Software": "ich-expansion", **(text or {})})
