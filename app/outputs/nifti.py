"""Haematoma mask as compressed NIfTI via SimpleITK.

SimpleITK converts the LPS geometry of the image to the NIfTI RAS qform/sform on write, so the file lines up
with the original series in any NIfTI viewer (ITK-SNAP, 3D Slicer, nibabel).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import SimpleITK as sitk


def write_mask_nifti(mask: sitk.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``mask`` (uint8 {0,1}, LPS geometry) to ``path`` (``.nii.gz``, gzip-compressed)."""
    out = Path(path)
    if not out.name.endswith((".nii.gz", ".nii")):
        raise ValueError(f"NIfTI path must end with .nii.gz or .nii, got {out.name!r}")
    sitk.WriteImage(sitk.Cast(mask, sitk.sitkUInt8), str(out), useCompression=True)
    return out


def mask_nifti_bytes(mask: sitk.Image, tmp_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The ``.nii.gz`` file contents (SimpleITK writes files only; a private temp file is used and removed)."""
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="ich-nifti-") as tmp:
        path = write_mask_nifti(mask, Path(tmp) / "mask.nii.gz")
        return path.read_bytes()
