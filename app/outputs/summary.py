"""Secondary-capture summary image (highdicom SC, RGB) of one prediction, for the study's PACS series list.

One instance in a new series of the source's study (patient and study modules copied from the first source
header): the key axial slices of the analysis grid (the PNG overview's choice, :attr:`CompactResult.overlay_indices
<app.outputs.compact.CompactResult>`, so both views show the same slices) side by side in ascending z, brain window
0-80 HU, the haematoma outline burnt in red, and text lines burnt in above them (5 x 7 bitmap font of
:mod:`app.outputs.label`): "Research use only - not for diagnosis", the haematoma volume and ABC/2 (mL), the
expansion probability and decision or why there is none, the model and the slice numbers. Display orientation as
in :mod:`app.outputs.overlay` (row 0 anterior, patient right on the image left for an LPS-aligned axial grid).
``BurnedInAnnotation`` is YES.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from scipy import ndimage

from app.outputs.label import text_mask
from app.outputs.result_uids import ResultUids
from app.outputs.seg import MANUFACTURER, with_type2_attributes

SUMMARY_ROLE = "summary"
SUMMARY_SERIES_NUMBER = 9903
RESEARCH_ONLY = "Research use only - not for diagnosis"
OUTLINE_RGB = (255, 0, 0)
WARNING_RGB = (255, 210, 0)
TEXT_RGB = (255, 255, 255)
GAP_PX = 4


def summary_lines(document: Mapping[str, Any], indices: Sequence[int], depth: int) -> list[str]:
    """The text lines burnt into the image (the first is :data:`RESEARCH_ONLY`)."""
    h, e, model = document["haematoma"], document["expansion"], document["model"]
    lines = [RESEARCH_ONLY, f"Haematoma volume {h['volume_ml']:.1f} ml - ABC/2 {h['abc2_volume_ml']:.1f} ml"]
    if e.get("probability") is None:
        reason = str(e.get("reason") or "unknown").replace("_", " ")
        lines.append(f"Expansion not assessed - {reason}")
    else:
        lines.append(f"Expansion probability {e['probability']:.2f} - predicted "
                     f"{'yes' if e['predicted'] else 'no'} at threshold {e['threshold']:.2f}")
    slices = " ".join(str(z + 1) for z in indices)
    lines.append(f"Model {model['name']} {model['version']} - slices {slices} of {depth}")
    return lines


def _panel(hu: np.ndarray, mask: np.ndarray, row_scale: float) -> np.ndarray:
    grey = np.clip(hu.astype(np.float32) * (255.0 / 80.0), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    m = mask.astype(bool)
    if m.any():
        rgb[m & ~ndimage.binary_erosion(m, border_value=0)] = OUTLINE_RGB
    if abs(row_scale - 1.0) > 1e-3:  # physical aspect: rows of spacing_y mm shown as row_scale pixel rows
        n_rows = max(1, round(rgb.shape[0] * row_scale))
        rgb = rgb[np.minimum((np.arange(n_rows) + 0.5) / row_scale, rgb.shape[0] - 1).astype(np.intp)]
    return rgb


def _text_block(lines: Sequence[str], width: int) -> np.ndarray:
    longest = max(len(line) for line in lines)
    scale = int(np.clip(width // max(1, 6 * longest), 1, 3))
    pad = 3 * scale
    rows = []
    for k, line in enumerate(lines):
        ink = text_mask(line, scale)[:, : width - 2 * pad]
        row = np.zeros((ink.shape[0] + pad, width, 3), np.uint8)
        row[pad: pad + ink.shape[0], pad: pad + ink.shape[1]][ink[: row.shape[0] - pad]] = (
            WARNING_RGB if k == 0 else TEXT_RGB)
        rows.append(row)
    rows.append(np.zeros((pad, width, 3), np.uint8))
    return np.concatenate(rows, axis=0)


def summary_image(hu_slices: np.ndarray, mask_slices: np.ndarray, spacing_zyx: tuple[float, float, float],
                  lines: Sequence[str]) -> np.ndarray:
    """RGB uint8 (rows, columns, 3): the text block above the key slices ``hu_slices`` (k, y, x, HU) with
    ``mask_slices`` (same shape) outlined; ``spacing_zyx`` in mm sets the pixel aspect."""
    if hu_slices.shape != mask_slices.shape or hu_slices.ndim != 3 or hu_slices.shape[0] < 1:
        raise ValueError(f"hu {hu_slices.shape} and mask {mask_slices.shape} must be the same (k, y, x) shape")
    row_scale = float(spacing_zyx[1]) / float(spacing_zyx[2])
    panels = [_panel(h, m, row_scale) for h, m in zip(hu_slices, mask_slices, strict=True)]
    gap = np.zeros((panels[0].shape[0], GAP_PX, 3), np.uint8)
    strip = np.concatenate([p for k, panel in enumerate(panels) for p in ((gap, panel) if k else (panel,))], axis=1)
    text_width = 6 * max(len(line) for line in lines) + 6  # every line legible at scale 1, however small the slices
    if strip.shape[1] < text_width:
        strip = np.pad(strip, ((0, 0), (0, text_width - strip.shape[1]), (0, 0)))
    return np.concatenate([_text_block(lines, strip.shape[1]), strip], axis=0)


def build_summary(source_headers: Sequence[pydicom.Dataset], rgb: np.ndarray, uids: ResultUids,
                  lines: Sequence[str]) -> pydicom.Dataset:
    """The SC instance of ``rgb`` (uint8, rows x columns x 3) in the study of ``source_headers``."""
    if not source_headers:
        raise ValueError("the summary needs the source instances it summarises")
    ref = with_type2_attributes(source_headers[0])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "P"),  # columns run to patient left, rows to posterior (axial, LPS grid)
        series_instance_uid=uids.series(SUMMARY_ROLE),
        series_number=SUMMARY_SERIES_NUMBER,
        sop_instance_uid=uids.instance(SUMMARY_ROLE),
        instance_number=1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
    )
    sc.SeriesDescription = "ICH summary (research use only)"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = " | ".join(lines)[:10240]
    sc.ManufacturerModelName = uids.algorithm_name[:64]
    sc.SoftwareVersions = uids.algorithm_version[:64]
    return sc


def summary_bytes(sc: pydicom.Dataset) -> bytes:
    """Serialise the SC image as a DICOM Part-10 file."""
    buffer = io.BytesIO()
    sc.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
