"""Result files: NIfTI mask, DICOM SEG (highdicom), PNG overview, and the compact form they render from."""

from app.outputs.compact import FILE_NAMES, CompactResult
from app.outputs.nifti import mask_nifti_bytes, write_mask_nifti
from app.outputs.overlay import encode_png_rgb, key_slices, render_overlay_png, render_panels
from app.outputs.seg import build_seg, seg_bytes

__all__ = [
    "FILE_NAMES",
    "CompactResult",
    "build_seg",
    "encode_png_rgb",
    "key_slices",
    "mask_nifti_bytes",
    "render_overlay_png",
    "render_panels",
    "seg_bytes",
    "write_mask_nifti",
]
