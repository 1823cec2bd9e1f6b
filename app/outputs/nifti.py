"""Haematoma mask as compressed NIfTI via SimpleITK.

SimpleITK converts the LPS geometry of the image to the NIfTI RAS qform/sform on write, so the file lines up
with the original series in any NIfTI viewer (ITK-SNAP, 3D Slicer, nibabel).

A binary mask compresses extremely well even at the fastest deflate level, so gzip level 1 is the default:
the file is a few percent larger than at level 6 and several times faster to write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import SimpleITK as sitk

FAST_COMPRESSION_LEVEL = 1


def write_mask_nifti(
    mask: sitk.Image, path: str | os.PathLike[str], *, compression_level: int = FAST_COMPRESSION_LEVEL
) -> Path:
    """Write ``mask`` (uint8 {0,1}, LPS geometry) to ``path`` (``.nii.gz`` gzip-compressed at
    ``compression_level`` 1-9, or plain ``.nii``)."""
    out = Path(path)
    if not out.name.endswith((".nii.gz", ".nii")):
        raise ValueError(f"NIfTI path must end with .nii.gz or .nii, got {out.name!r}")
    if not 1 <= compression_level <= 9:
        raise ValueError(f"compression_level must be 1-9, got {compression_level}")
    compress = out.name.endswith(".gz")
    sitk.WriteImage(sitk.Cast(mask, sitk.sitkUInt8), str(out), useCompression=compress,
                    compressionLevel=compression_level if compress else -1)
    return out


def mask_nifti_bytes(
    mask: sitk.Image,
    tmp_dir: str | os.PathLike[str] | None = None,
    *,
    compression_level: int = FAST_COMPRESSION_LEVEL,
) -> bytes:
    """The ``.nii.gz`` file contents (SimpleITK writes files only; a private temp file is used and removed)."""
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="ich-nifti-") as tmp:
        path = write_mask_nifti(mask, Path(tmp) / "mask.nii.gz", compression_level=compression_level)
        return path.read_bytes()
