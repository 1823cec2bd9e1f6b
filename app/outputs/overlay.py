"""PNG overview of the key slices with the haematoma outlined (matplotlib, Agg canvas, no pyplot state).

Slices are axial planes of the analysis grid (array index z of a z-y-x array, displayed with row 0 at the
top, i.e. anterior up and patient right on the image left for an LPS-aligned axial grid, the radiological
convention). The window is a brain window (default 0-80 HU).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def key_slices(mask: np.ndarray, n: int = 3) -> list[int]:
    """Indices (ascending) of up to ``n`` axial slices: the slice with the largest mask area and its
    neighbours spread over the mask's extent; the central slices when the mask is empty."""
    depth = mask.shape[0]
    n = max(1, min(n, depth))
    areas = mask.reshape(depth, -1).sum(axis=1)
    if not areas.any():
        centre = depth // 2
        start = max(0, min(centre - n // 2, depth - n))
        return list(range(start, start + n))
    nonzero = np.flatnonzero(areas)
    peak = int(np.argmax(areas))
    picks = {peak}
    for idx in np.linspace(nonzero[0], nonzero[-1], num=n + 2)[1:-1].round().astype(int):
        if len(picks) >= n:
            break
        picks.add(int(idx))
    for idx in range(depth):  # fill with neighbours of the peak when the mask spans fewer slices than n
        if len(picks) >= n:
            break
        for cand in (peak - idx, peak + idx):
            if 0 <= cand < depth and len(picks) < n:
                picks.add(cand)
    return sorted(picks)


def render_overlay_png(
    hu: np.ndarray,
    mask: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    *,
    n_slices: int = 3,
    window_hu: tuple[float, float] = (0.0, 80.0),
    dpi: int = 100,
) -> bytes:
    """PNG bytes showing ``n_slices`` key axial slices of ``hu`` (z, y, x, HU) with ``mask`` (same shape)
    outlined in red. Pixel aspect follows ``spacing_zyx`` (mm)."""
    if hu.shape != mask.shape or hu.ndim != 3:
        raise ValueError(f"hu {hu.shape} and mask {mask.shape} must be the same 3-D shape")
    indices = key_slices(mask, n_slices)
    aspect = float(spacing_zyx[1]) / float(spacing_zyx[2])
    fig = Figure(figsize=(3.2 * len(indices), 3.4), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    for col, z in enumerate(indices, start=1):
        ax = fig.add_subplot(1, len(indices), col)
        ax.imshow(hu[z], cmap="gray", vmin=window_hu[0], vmax=window_hu[1], aspect=aspect, interpolation="nearest")
        if mask[z].any():
            ax.contour(mask[z].astype(np.float32), levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(f"slice {z + 1}/{hu.shape[0]}", color="white", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout(pad=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=fig.get_facecolor())
    return buffer.getvalue()
