"""Result files: NIfTI mask, DICOM SEG (highdicom), PNG overview."""

from app.outputs.nifti import mask_nifti_bytes, write_mask_nifti
from app.outputs.overlay import key_slices, render_overlay_png
from app.outputs.seg import build_seg, seg_bytes

__all__ = ["build_seg", "key_slices", "mask_nifti_bytes", "render_overlay_png", "seg_bytes", "write_mask_nifti"]
