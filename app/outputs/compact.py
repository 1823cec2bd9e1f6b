"""The compact form of one prediction's outputs, from which NIfTI, DICOM SEG and PNG are rendered on demand.

Rendering all three files on the request path cost more than the forward pass (SEG ~0.1-1 s, PNG ~0.6-0.9 s
with matplotlib, NIfTI up to 2 s at gzip level 6 under load). A :class:`CompactResult` instead keeps what the
renderers need, small and pixel-free where it concerns the source:

* the mask on the analysis grid as packed bits (1 bit per voxel, z-y-x) plus its LPS geometry (SimpleITK
  origin / spacing / direction, x-y-z order, mm);
* the per-source-instance masks as packed bits only when they differ from the analysis-grid mask (tilted or
  resampled acquisitions);
* the pixel-free source headers (for the SEG's references and patient/study modules);
* the HU of the PNG's key slices only (int16, HU), with their indices, and the regions of the NCCT markers
  reported present on those slices (packed bits), which the PNG outlines;
* optionally (the service keeps it, ``python -m app predict`` does not) the whole HU volume as compressed slices
  (:class:`~app.outputs.slices.SliceStack`), from which :meth:`CompactResult.render_slice` draws any axial slice
  with the mask outline for a viewer (:meth:`CompactResult.slice_index` describes them);
* the volume (mL) and calibrated probability for the overview's banner;
* whether a haematoma was detected: when not, the (empty) mask still renders as NIfTI and as a DICOM SEG with
  every frame empty (highdicom accepts an all-empty segment), and the PNG carries the label
  :data:`NOT_DETECTED_LABEL`.

:meth:`CompactResult.render` builds one file; the result store calls it on the first GET and caches the bytes.
A result without source instances (a NIfTI input) has no DICOM SEG: :meth:`CompactResult.unavailable` gives the
machine-readable code and the reason, :attr:`CompactResult.available_files` lists what can be rendered, and
rendering the SEG raises :class:`OutputUnavailable`.

The DICOM SR (:mod:`app.outputs.sr`) and the secondary-capture summary (:mod:`app.outputs.summary`) also report
the result document's figures (volume, probability, decision): they render once the document is attached with
:meth:`CompactResult.with_document` (the service and the CLI attach it as soon as it is built). The SEG, SR and
summary carry stable UIDs derived from the source instances and the weights (:attr:`CompactResult.result_uids`),
and the SR references the SEG by its UID.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from app.outputs.nifti import mask_nifti_bytes
from app.outputs.overlay import PanelAnnotations, key_slices, render_panels
from app.outputs.result_uids import ResultUids
from app.outputs.seg import build_seg, seg_bytes
from app.outputs.slices import (
    WINDOWS,
    SliceStack,
    aspect_rows,
    orientation_labels,
    render_slice_png,
    slice_positions_mm,
)
from app.outputs.sr import build_sr, sr_bytes
from app.outputs.summary import build_summary, summary_bytes, summary_image, summary_lines

FILE_NAMES: tuple[str, ...] = ("mask.nii.gz", "seg.dcm", "overlay.png", "sr.dcm", "summary.dcm")
# the DICOM objects that reference the source instances (no NIfTI input can have them)
DICOM_FILES: tuple[str, ...] = ("seg.dcm", "sr.dcm", "summary.dcm")
# the files whose content is the result document's (volume, probability, ...): :meth:`CompactResult.with_document`
DOCUMENT_FILES: tuple[str, ...] = ("sr.dcm", "summary.dcm")
# Budget charged per pixel-free source header. A CT header without pixel data is 1-4 KiB as a pydicom
# Dataset; 8 KiB also covers the Python object overhead.
HEADER_NBYTES_ESTIMATE = 8 * 1024
SEG_ROLE = "seg"
SEG_NEEDS_DICOM_SOURCE = "seg_needs_dicom_source"
SEG_NEEDS_DICOM_SOURCE_REASON = ("The DICOM SEG references the source DICOM instances; this prediction was made "
                                 "from a NIfTI volume, which has none. Use mask.nii.gz instead.")
NOT_DETECTED_LABEL = "No haematoma detected"
NEEDS_DICOM_SOURCE_REASON = ("The DICOM result objects reference the source DICOM instances; this prediction was "
                             "made from a NIfTI volume, which has none. Use mask.nii.gz and result.json instead.")
NEEDS_DICOM_SOURCE = "needs_dicom_source"
NEEDS_DOCUMENT = "needs_result_document"
SLICES_UNAVAILABLE = "slices_unavailable"
SLICES_UNAVAILABLE_REASON = "This result was stored without its image volume, so its slices cannot be shown."


class OutputUnavailable(KeyError):
    """A result file that this prediction cannot produce; ``code`` is machine-readable, ``reason`` a sentence."""

    def __init__(self, name: str, code: str, reason: str):
        super().__init__(name)
        self.name = name
        self.code = code
        self.reason = reason


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, dtype=bool).ravel())


def _unpack(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.unpackbits(bits, count=count).reshape(shape)


@dataclass(frozen=True)
class CompactResult:
    """Everything needed to render the result files; see the module docstring. Immutable, thread-safe."""

    shape_zyx: tuple[int, int, int]
    origin: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0), SimpleITK order (x, y, z)
    spacing: tuple[float, float, float]  # mm, SimpleITK order (x, y, z)
    direction: tuple[float, ...]  # 3x3 row-major direction cosines (SimpleITK)
    mask_bits: np.ndarray
    slice_mask_shape: tuple[int, int, int] | None  # (n_instances, rows, columns) when stored separately
    slice_mask_bits: np.ndarray | None
    source_headers: tuple[pydicom.Dataset, ...]
    overlay_indices: tuple[int, ...]
    overlay_hu: np.ndarray  # int16 (k, y, x), HU of the key slices
    algorithm_name: str
    algorithm_version: str
    detected: bool = True  # False: the detection rule rejected the mask (the mask is empty)
    slices: SliceStack | None = None  # the whole HU volume for the viewer (None: not kept)
    volume_ml: float | None = None  # haematoma volume (mL) and calibrated probability, for the overview banner
    probability: float | None = None
    document: Mapping[str, Any] | None = None  # the result document as JSON, for the SR and the summary
    # NCCT marker name -> its region on the key slices (packed bits of (k, y, x)), outlined in the overview
    marker_bits: tuple[tuple[str, np.ndarray], ...] = ()

    def with_document(self, document: Any) -> CompactResult:
        """A copy that also renders :data:`DOCUMENT_FILES` (SR, summary) from ``document``: a
        :class:`~app.result_schema.PredictionResponse` or its JSON dict."""
        body = document.model_dump(mode="json") if hasattr(document, "model_dump") else dict(document)
        return replace(self, document=body)

    @property
    def result_uids(self) -> ResultUids:
        """The stable UIDs of this result's DICOM objects (:mod:`app.outputs.result_uids`)."""
        return ResultUids.for_sources((str(h.SOPInstanceUID) for h in self.source_headers),
                                      self.algorithm_name, self.algorithm_version)

    @classmethod
    def from_prediction(cls, series: Any, result: Any, *, algorithm_name: str, algorithm_version: str,
                        n_overlay_slices: int = 3, keep_slices: bool = False) -> CompactResult:
        """From an :class:`~app.ingestion.types.IngestedSeries` and a :class:`~app.inference.PredictionResult`;
        ``keep_slices``: also keep the HU volume (compressed) for :meth:`render_slice`."""
        return cls.from_arrays(series, result.mask, result.source_slice_masks, algorithm_name=algorithm_name,
                               algorithm_version=algorithm_version, n_overlay_slices=n_overlay_slices,
                               detected=bool(getattr(result, "detected", True)), keep_slices=keep_slices,
                               volume_ml=getattr(result, "volume_ml", None),
                               probability=getattr(result, "probability", None),
                               marker_regions=getattr(result, "marker_regions", None))

    @classmethod
    def from_arrays(cls, series: Any, mask: sitk.Image, source_slice_masks: np.ndarray, *, algorithm_name: str,
                    algorithm_version: str, n_overlay_slices: int = 3, detected: bool = True,
                    keep_slices: bool = False, volume_ml: float | None = None,
                    probability: float | None = None,
                    marker_regions: Mapping[str, np.ndarray] | None = None) -> CompactResult:
        """``mask``: uint8 {0,1} image on ``series.image``'s grid; ``source_slice_masks``: uint8
        (n_instances, rows, columns), one frame per entry of ``series.source_headers``; ``detected``: False
        when the detection rule rejected the mask (the PNG then says so); ``keep_slices``: keep the HU volume
        (:class:`SliceStack`); ``volume_ml`` (mL) and ``probability`` (0-1): written on the overview;
        ``marker_regions``: NCCT marker -> region (z, y, x) on the mask's grid, kept on the key slices only."""
        arr = sitk.GetArrayViewFromImage(mask)
        per_slice = np.asarray(source_slice_masks)
        if per_slice.ndim != 3 or per_slice.shape[0] != len(series.source_headers):
            raise ValueError(f"need one mask frame per source instance: {per_slice.shape} for "
                             f"{len(series.source_headers)} instances")
        same = per_slice.shape == arr.shape and np.array_equal(per_slice, arr)
        hu = series.hu_array
        picks = key_slices(arr, n_overlay_slices, hu)
        overlay_hu = np.clip(np.rint(hu[picks]), -32768, 32767).astype(np.int16)
        return cls(
            shape_zyx=tuple(int(v) for v in arr.shape),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in mask.GetOrigin()),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in mask.GetSpacing()),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in mask.GetDirection()),
            mask_bits=_pack(arr),
            slice_mask_shape=None if same else tuple(int(v) for v in per_slice.shape),  # type: ignore[arg-type]
            slice_mask_bits=None if same else _pack(per_slice),
            source_headers=tuple(series.source_headers),
            overlay_indices=tuple(picks),
            overlay_hu=overlay_hu,
            algorithm_name=algorithm_name,
            algorithm_version=algorithm_version,
            detected=bool(detected),
            slices=SliceStack.from_hu(hu) if keep_slices else None,
            volume_ml=None if volume_ml is None else float(volume_ml),
            probability=None if probability is None else float(probability),
            marker_bits=tuple((name, _pack(np.asarray(region)[picks])) for name, region in
                              (marker_regions or {}).items()),
        )

    # --- views ----------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Approximate memory held (bytes), for the result store's budget."""
        total = self.mask_bits.nbytes + self.overlay_hu.nbytes + 1024
        total += sum(bits.nbytes for _, bits in self.marker_bits)
        if self.slice_mask_bits is not None:
            total += self.slice_mask_bits.nbytes
        if self.slices is not None:
            total += self.slices.nbytes
        return total + HEADER_NBYTES_ESTIMATE * len(self.source_headers)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    def mask_array(self) -> np.ndarray:
        """uint8 {0,1} (z, y, x) on the analysis grid."""
        return _unpack(self.mask_bits, self.shape_zyx)

    def mask_slice(self, k: int) -> np.ndarray:
        """uint8 {0,1} (y, x): axial slice ``k`` of the mask, unpacked alone."""
        depth, rows, cols = self.shape_zyx
        if not 0 <= k < depth:
            raise IndexError(f"slice {k} outside 0..{depth - 1}")
        first, count = k * rows * cols, rows * cols
        chunk = self.mask_bits[first // 8: (first + count + 7) // 8 + 1]
        bits = np.unpackbits(chunk)[first % 8: first % 8 + count]
        return bits.reshape(rows, cols)

    def mask_image(self) -> sitk.Image:
        """The mask as a uint8 SimpleITK image with the analysis grid's LPS geometry."""
        image = sitk.GetImageFromArray(self.mask_array())
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def source_slice_masks(self) -> np.ndarray:
        """uint8 (n_instances, rows, columns): frame k belongs to ``source_headers[k]``."""
        if self.slice_mask_bits is None or self.slice_mask_shape is None:
            return self.mask_array()
        return _unpack(self.slice_mask_bits, self.slice_mask_shape)

    def unavailable(self, name: str) -> OutputUnavailable | None:
        """Why file ``name`` of :data:`FILE_NAMES` cannot be produced for this result, or None when it can."""
        if name == "seg.dcm" and not self.source_headers:
            return OutputUnavailable(name, SEG_NEEDS_DICOM_SOURCE, SEG_NEEDS_DICOM_SOURCE_REASON)
        if name in DICOM_FILES and not self.source_headers:
            return OutputUnavailable(name, NEEDS_DICOM_SOURCE, NEEDS_DICOM_SOURCE_REASON)
        if name in DOCUMENT_FILES and self.document is None:
            return OutputUnavailable(name, NEEDS_DOCUMENT, "This file is made from the result document, which "
                                     "was not attached to the result (CompactResult.with_document).")
        return None

    @property
    def available_files(self) -> tuple[str, ...]:
        """The names of :data:`FILE_NAMES` this result can render (no ``seg.dcm`` without source instances)."""
        return tuple(name for name in FILE_NAMES if self.unavailable(name) is None)

    # --- rendering ------------------------------------------------------------------------------------------
    def render(self, name: str) -> bytes:
        """The bytes of one file of :data:`FILE_NAMES`. Raises :class:`OutputUnavailable` (a ``KeyError``) for a
        file this result cannot produce and ``KeyError`` for any other name."""
        missing = self.unavailable(name)
        if missing is not None:
            raise missing
        if name == "mask.nii.gz":
            return mask_nifti_bytes(self.mask_image())
        if name == "seg.dcm":
            uids = self.result_uids
            seg = build_seg(list(self.source_headers), self.source_slice_masks(),
                            algorithm_name=self.algorithm_name, algorithm_version=self.algorithm_version,
                            series_instance_uid=uids.series(SEG_ROLE), sop_instance_uid=uids.instance(SEG_ROLE))
            return seg_bytes(seg)
        if name == "sr.dcm":
            uids = self.result_uids
            assert self.document is not None
            return sr_bytes(build_sr(self.source_headers, self.document, uids, uids.series(SEG_ROLE),
                                     uids.instance(SEG_ROLE)))
        if name == "summary.dcm":
            assert self.document is not None
            picks = list(self.overlay_indices)
            lines = summary_lines(self.document, picks, self.shape_zyx[0])
            rgb = summary_image(self.overlay_hu, self.mask_array()[picks], self.spacing_zyx, lines)
            return summary_bytes(build_summary(self.source_headers, rgb, self.result_uids, lines))
        if name == "overlay.png":
            picks = list(self.overlay_indices)
            positions = slice_positions_mm(self.shape_zyx, self.origin, self.spacing, self.direction)
            annotations = PanelAnnotations(orientation_labels(self.direction), [positions[z] for z in picks])
            markers = {name: _unpack(bits, self.overlay_hu.shape) for name, bits in self.marker_bits}
            return render_panels(self.overlay_hu, np.stack([self.mask_slice(z) for z in picks]), picks,
                                 self.shape_zyx[0], self.spacing_zyx, label=self.headline(),
                                 annotations=annotations, markers=markers)
        raise KeyError(name)

    def headline(self) -> str | None:
        """The overview's banner: the volume and probability, or :data:`NOT_DETECTED_LABEL`."""
        if not self.detected:
            return NOT_DETECTED_LABEL
        if self.volume_ml is None:
            return None
        text = f"Haematoma {self.volume_ml:.1f} mL"
        if self.probability is not None:
            text += f"  expansion probability {self.probability:.2f}"
        return text

    # --- the slice viewer -----------------------------------------------------------------------------------
    def slice_index(self) -> dict[str, Any]:
        """What a viewer needs about the axial slices (JSON-able): ``count``; ``positions_mm`` (LPS z of each
        slice centre, mm); ``orientation`` (patient direction at each image edge); ``spacing_mm`` (z, y, x);
        ``rows``/``columns`` of the PNGs (rows after aspect correction); ``mask_pixels`` (mask pixels per slice,
        analysis grid); ``key_slices`` (the overview's); ``windows`` (name -> [low, high] HU). Raises
        :class:`OutputUnavailable` when the volume was not kept."""
        self._require_slices()
        depth, rows, cols = self.shape_zyx
        areas = self.mask_array().reshape(depth, -1).sum(axis=1, dtype=np.int64)
        row_scale = self.spacing_zyx[1] / self.spacing_zyx[2]
        return {
            "count": depth,
            "positions_mm": slice_positions_mm(self.shape_zyx, self.origin, self.spacing, self.direction),
            "orientation": orientation_labels(self.direction),
            "spacing_mm": list(self.spacing_zyx),
            "rows": int(aspect_rows(np.zeros((rows, 1, 1), np.uint8), row_scale).shape[0]),
            "columns": cols,
            "mask_pixels": [int(a) for a in areas],
            "key_slices": list(self.overlay_indices),
            "windows": {name: list(w) for name, w in WINDOWS.items()},
        }

    def render_slice(self, k: int, window: str = "brain") -> bytes:
        """PNG of axial slice ``k`` (0-based, ascending z) in window ``window`` of :data:`WINDOWS` with the mask
        outlined. Raises :class:`OutputUnavailable` without a kept volume, ``IndexError`` for ``k`` outside
        ``0..count-1`` and ``ValueError`` for an unknown window."""
        stack = self._require_slices()
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; one of {sorted(WINDOWS)}")
        hu = stack.slice(k)
        position = slice_positions_mm(self.shape_zyx, self.origin, self.spacing, self.direction)[k]
        low, high = WINDOWS[window]
        text = {"Description": f"axial slice {k + 1}/{self.shape_zyx[0]}, z {position:.1f} mm (LPS), {window} "
                               f"window {low:g} to {high:g} HU; haematoma outlined in red"}
        return render_slice_png(hu, self.mask_slice(k), self.spacing_zyx, window=window, text=text)

    def _require_slices(self) -> SliceStack:
        if self.slices is None:
            raise OutputUnavailable("slices", SLICES_UNAVAILABLE, SLICES_UNAVAILABLE_REASON)
        return self.slices

    def render_all(self, names: Sequence[str] | None = None) -> dict[str, bytes]:
        """The files ``names`` (default: :attr:`available_files`) as bytes."""
        return {name: self.render(name) for name in (self.available_files if names is None else names)}
