"""PNG overview of the key slices with the haematoma outlined in red (numpy + a minimal zlib PNG writer).

The regions of the NCCT markers the answer reports present (:mod:`app.model.marker_regions`) are outlined too,
each in its colour (:data:`MARKER_STYLE`), with a legend strip under the panels.

Slices are axial planes of the analysis grid (array index z of a z-y-x array), displayed with row 0 at the top,
i.e. anterior up and patient right on the image left for an LPS-aligned axial grid (the radiological
convention). The window is a brain window (default 0-80 HU). Panels are placed left to right in ascending z
(inferior to superior for an LPS grid), separated by a black gap; the slice numbers (1-based) are written in the
PNG ``tEXt`` chunk ``Description``. When the caller passes a ``label`` (``"No haematoma detected"`` when the
detection rule rejected the mask), it is burnt in as a banner above the panels (:mod:`app.outputs.label`) and
also written to the ``tEXt`` chunk ``Comment``. Non-square pixels are corrected by nearest-neighbour row resampling so that
anatomy keeps its proportions.

Key slices are chosen by area (:func:`key_slices`): the largest cross-section of the mask and slices spread over
its area, so none is empty; without a mask, slices through the middle of the brain (largest intracranial area).
With :class:`PanelAnnotations` every panel carries the patient direction at each edge (R/L, A/P for an axial
grid) and a caption under it (slice number and LPS z position in mm); the result's own overview
(:meth:`app.outputs.CompactResult.render`) also states the volume and the expansion probability in the banner.

The whole rendering is array arithmetic (no figure, no font rendering) and deflate level 1: a few tens of ms
for three 512 x 512 panels, instead of the ~0.6 s a matplotlib figure took.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from app.outputs.label import label_banner, text_mask

OUTLINE_RGB = (255, 0, 0)
ANNOTATION_RGB = (255, 255, 255)
PANEL_GAP_PX = 4
#: outline colour and legend word of each NCCT marker region (:mod:`app.model.marker_regions`)
MARKER_STYLE: dict[str, tuple[tuple[int, int, int], str]] = {
    "hypodensity": ((255, 220, 0), "HYPODENSE"),
    "black_hole": ((60, 140, 255), "BLACK HOLE"),
    "swirl": ((0, 255, 255), "SWIRL"),
    "blend": ((255, 0, 255), "BLEND"),
    "fluid_level": ((0, 255, 0), "FLUID LEVEL"),
    "irregular_shape": ((255, 140, 0), "IRREGULAR"),
}


def key_slices(mask: np.ndarray, n: int = 3, hu: np.ndarray | None = None) -> list[int]:
    """Indices (ascending) of up to ``n`` axial slices chosen by area: the slice of largest mask area and the
    slices where the cumulative mask area passes the fractions (k + 0.5) / n, so every pick holds mask (a stray
    voxel far from the clot weighs nothing); when the mask spans fewer than ``n`` slices, the peak's neighbours
    fill in. An empty mask with ``hu`` (z, y, x, HU) given: the same choice by intracranial area
    (:func:`intracranial_areas`), i.e. slices through the brain's middle, never the vertex or the neck; without
    ``hu`` (or without a skull): the central slices."""
    depth = mask.shape[0]
    n = max(1, min(n, depth))
    areas = mask.reshape(depth, -1).sum(axis=1, dtype=np.int64)
    if not areas.any() and hu is not None:
        areas = intracranial_areas(hu)
    if not areas.any():
        centre = depth // 2
        start = max(0, min(centre - n // 2, depth - n))
        return list(range(start, start + n))
    peak = int(np.argmax(areas))
    cumulative = np.cumsum(areas) / float(areas.sum())
    chosen = [peak]
    for fraction in (np.arange(n) + 0.5) / n:
        z = int(np.searchsorted(cumulative, fraction))  # the first slice reaching it has area > 0
        if z not in chosen:
            chosen.append(z)
    while len(chosen) > n:  # drop the pick nearest the peak, keeping the spread
        chosen.remove(min(chosen[1:], key=lambda z: abs(z - peak)))
    for z in np.argsort(-areas, kind="stable"):  # other slices with area, largest first
        if len(chosen) >= n or areas[z] == 0:
            break
        if int(z) not in chosen:
            chosen.append(int(z))
    for step in range(1, depth):  # the mask spans fewer than n slices: the peak's neighbours
        for cand in (peak - step, peak + step):
            if len(chosen) < n and 0 <= cand < depth and cand not in chosen:
                chosen.append(cand)
    return sorted(chosen)


def intracranial_areas(hu: np.ndarray, bone_hu: float = 300.0) -> np.ndarray:
    """Per axial slice of ``hu`` (z, y, x, HU), the number of pixels (on an in-plane grid subsampled to about 96
    columns) of soft tissue (0-100 HU) enclosed by bone (>= ``bone_hu``, closed by one pixel): large through
    the middle of the brain, small at the vertex, near zero in the neck and without a skull."""
    step = max(1, round(hu.shape[2] / 96))
    small = hu[:, ::step, ::step]
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)  # every slice on its own
    bone = ndimage.binary_closing(small >= bone_hu, structure=in_plane)
    # holes of the bone: background components (in-plane) that do not reach the slice's edge
    labels, count = ndimage.label(~bone, structure=in_plane)
    outside = np.zeros(count + 1, dtype=bool)
    outside[0] = True  # bone
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[np.unique(edge)] = True
    inside = ~outside[labels] & (small >= 0) & (small <= 100)
    return inside.reshape(len(inside), -1).sum(axis=1, dtype=np.int64)


@dataclass(frozen=True)
class PanelAnnotations:
    """What the overview writes on its panels: the patient direction at each edge (``left``, ``right``, ``top``,
    ``bottom``; :func:`app.outputs.slices.orientation_labels`) and each panel's slice position (LPS z, mm)."""

    orientation: dict[str, str]
    positions_mm: list[float]


def encode_png_rgb(rgb: np.ndarray, *, text: dict[str, str] | None = None, level: int = 1) -> bytes:
    """A PNG (8-bit RGB, no interlace, filter type 0 on every row) of ``rgb`` (H, W, 3) uint8.

    ``text`` entries become ``tEXt`` chunks (Latin-1 keywords and values)."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected a non-empty (H, W, 3) array, got {arr.shape}")
    height, width = arr.shape[:2]
    raw = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    raw[:, 0] = 0  # filter type "None"
    raw[:, 1:] = arr.reshape(height, 3 * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():
        parts.append(chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")))
    parts.append(chunk(b"IDAT", zlib.compress(raw.tobytes(), level)))
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts)


def _edge(region: np.ndarray) -> np.ndarray:
    m = region.astype(bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def _panel(hu: np.ndarray, mask: np.ndarray, window_hu: tuple[float, float], row_scale: float,
           markers: Sequence[tuple[np.ndarray, tuple[int, int, int]]] = ()) -> np.ndarray:
    """One slice as RGB uint8: windowed grey, mask boundary (4-connected inner edge) in red, then each marker
    region's boundary in its colour."""
    lo, hi = window_hu
    grey = np.clip((hu.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if mask.any():
        rgb[_edge(mask)] = OUTLINE_RGB
    for region, colour in markers:
        if region.any():
            rgb[_edge(region)] = colour
    if abs(row_scale - 1.0) > 1e-3:  # physical aspect: rows of spacing_y mm shown as row_scale pixel rows
        n_rows = max(1, round(rgb.shape[0] * row_scale))
        src = np.minimum((np.arange(n_rows) + 0.5) / row_scale, rgb.shape[0] - 1).astype(np.intp)
        rgb = rgb[src]
    return rgb


def _legend(names: Sequence[str], width: int) -> np.ndarray:
    """A black strip naming each outlined marker in its outline colour, left to right."""
    scale = max(1, width // 480)
    pad = 2 * scale
    words = [(text_mask(MARKER_STYLE[n][1], scale), MARKER_STYLE[n][0]) for n in names]
    strip = np.zeros((words[0][0].shape[0] + 2 * pad, width, 3), np.uint8)
    left = pad
    for ink, colour in [(text_mask("MARKERS", scale), ANNOTATION_RGB), *words]:
        if left + ink.shape[1] > width:
            break
        _stamp(strip, ink, pad, left, colour)
        left += ink.shape[1] + 4 * scale
    return strip


def render_overlay_png(
    hu: np.ndarray,
    mask: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    *,
    n_slices: int = 3,
    window_hu: tuple[float, float] = (0.0, 80.0),
    indices: list[int] | None = None,
    label: str | None = None,
    annotations: PanelAnnotations | None = None,
) -> bytes:
    """PNG bytes showing ``n_slices`` key axial slices of ``hu`` (z, y, x, HU) with ``mask`` (same shape)
    outlined in red. ``indices`` overrides the choice of slices (ascending z; by default :func:`key_slices`, by
    intracranial area when the mask is empty); pixel aspect follows ``spacing_zyx`` (mm); ``label``: visible
    text above the panels; ``annotations``: orientation letters and slice captions (see the module docstring).
    ``annotations.positions_mm`` holds one position per slice of ``hu`` here (the picks are taken from it)."""
    if hu.shape != mask.shape or hu.ndim != 3:
        raise ValueError(f"hu {hu.shape} and mask {mask.shape} must be the same 3-D shape")
    if window_hu[1] <= window_hu[0]:
        raise ValueError(f"window {window_hu} must be (low, high) with low < high")
    picks = list(indices) if indices is not None else key_slices(mask, n_slices, hu)
    if annotations is not None:
        annotations = PanelAnnotations(annotations.orientation, [annotations.positions_mm[z] for z in picks])
    return render_panels(np.stack([hu[z] for z in picks]), np.stack([mask[z] for z in picks]), picks,
                         hu.shape[0], spacing_zyx, window_hu=window_hu, label=label, annotations=annotations)


def render_panels(
    hu_slices: np.ndarray,
    mask_slices: np.ndarray,
    indices: list[int],
    depth: int,
    spacing_zyx: tuple[float, float, float],
    *,
    window_hu: tuple[float, float] = (0.0, 80.0),
    label: str | None = None,
    annotations: PanelAnnotations | None = None,
    markers: Mapping[str, np.ndarray] | None = None,
) -> bytes:
    """PNG of already extracted key slices: ``hu_slices`` (k, y, x, HU) and ``mask_slices`` (k, y, x) taken at
    z = ``indices`` of a volume ``depth`` slices deep (used by the result store, which keeps only these).
    ``label``: visible text in a banner above the panels, also in the ``tEXt`` chunk ``Comment``;
    ``annotations`` (one position per panel): orientation letters on every panel and a caption under each;
    ``markers``: NCCT marker name (:data:`MARKER_STYLE`) -> its region on the same key slices (k, y, x), outlined
    in the marker's colour and named in a legend under the panels (only markers whose region meets a panel)."""
    if hu_slices.shape != mask_slices.shape or hu_slices.ndim != 3 or len(indices) != hu_slices.shape[0]:
        raise ValueError(f"hu {hu_slices.shape}, mask {mask_slices.shape} and {len(indices)} indices disagree")
    regions = {n: np.asarray(markers[n], dtype=bool) for n in MARKER_STYLE if markers and n in markers}
    for name, region in regions.items():
        if region.shape != hu_slices.shape:
            raise ValueError(f"marker region {name} {region.shape} is not {hu_slices.shape}")
    shown = [n for n, r in regions.items() if r.any()]
    row_scale = float(spacing_zyx[1]) / float(spacing_zyx[2])
    panels = [_panel(h, m, window_hu, row_scale, [(regions[n][k], MARKER_STYLE[n][0]) for n in shown])
              for k, (h, m) in enumerate(zip(hu_slices, mask_slices, strict=True))]
    if annotations is not None:
        if len(annotations.positions_mm) != len(panels):
            raise ValueError(f"{len(annotations.positions_mm)} positions for {len(panels)} panels")
        panels = [_annotate(p, annotations.orientation, f"{z + 1}/{depth}  Z {mm:.1f} MM")
                  for p, z, mm in zip(panels, indices, annotations.positions_mm, strict=True)]
    height = panels[0].shape[0]
    gap = np.zeros((height, PANEL_GAP_PX, 3), np.uint8)
    row: list[np.ndarray] = []
    for k, panel in enumerate(panels):
        if k:
            row.append(gap)
        row.append(panel)
    description = "axial slices " + ", ".join(f"{z + 1}/{depth}" for z in indices) + "; haematoma outlined in red"
    if annotations is not None:
        o = annotations.orientation
        description += (f"; z (mm, LPS) {', '.join(f'{mm:.1f}' for mm in annotations.positions_mm)}; image left "
                        f"{o['left']}, right {o['right']}, top {o['top']}, bottom {o['bottom']}")
    if shown:
        description += "; NCCT markers outlined: " + ", ".join(
            f"{n} in rgb{MARKER_STYLE[n][0]}" for n in shown)
    image = np.concatenate(row, axis=1)
    if shown:
        image = np.concatenate([image, _legend(shown, image.shape[1])], axis=0)
    text = {"Description": description, "Software": "ich-expansion"}
    if label:
        image = np.concatenate([label_banner(label, image.shape[1]), image], axis=0)
        text["Comment"] = label
    return encode_png_rgb(image, text=text)


def _stamp(image: np.ndarray, ink: np.ndarray, top: int, left: int, rgb: tuple[int, int, int]) -> None:
    """Burn ``ink`` (bool) into ``image`` at (top, left) on a black box one pixel wider, clipped to the image."""
    h, w = image.shape[:2]
    top, left = max(0, min(top, h - ink.shape[0])), max(0, min(left, w - ink.shape[1]))
    ink = ink[: h - top, : w - left]
    box = image[max(0, top - 1): top + ink.shape[0] + 1, max(0, left - 1): left + ink.shape[1] + 1]
    box[:] = 0
    image[top: top + ink.shape[0], left: left + ink.shape[1]][ink] = rgb


def _annotate(panel: np.ndarray, orientation: dict[str, str], caption: str) -> np.ndarray:
    """``panel`` with the patient direction burnt in at the middle of each edge and ``caption`` in a black strip
    below it (white, scaled with the panel width)."""
    out = panel.copy()
    h, w = out.shape[:2]
    scale = max(1, w // 160)
    pad = 2 * scale
    for edge, letter in orientation.items():
        ink = text_mask(letter, scale)
        top = {"top": pad, "bottom": h - ink.shape[0] - pad}.get(edge, (h - ink.shape[0]) // 2)
        left = {"left": pad, "right": w - ink.shape[1] - pad}.get(edge, (w - ink.shape[1]) // 2)
        _stamp(out, ink, top, left, ANNOTATION_RGB)
    ink = text_mask(caption, scale)
    while ink.shape[1] > w - 2 and scale > 1:
        scale -= 1
        ink = text_mask(caption, scale)
    strip = np.zeros((ink.shape[0] + 2 * pad, w, 3), np.uint8)
    _stamp(strip, ink, pad, max(0, (w - ink.shape[1]) // 2), ANNOTATION_RGB)
    return np.concatenate([out, strip], axis=0)
