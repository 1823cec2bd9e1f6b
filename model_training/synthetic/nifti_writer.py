"""Write a synthetic case as NIfTI: the HU image (int16) and the ground-truth haematoma mask (uint8), both with
the same LPS geometry as the DICOM series (SimpleITK converts LPS to the NIfTI RAS convention on writing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from model_training.synthetic.case import SyntheticCase


def case_image(case: SyntheticCase, array: np.ndarray | None = None) -> sitk.Image:
    """``array`` (default: the HU volume), z-y-x, as a SimpleITK image with the case's geometry."""
    img = sitk.GetImageFromArray(case.hu if array is None else array)
    dz, dy, dx = case.spacing_zyx
    img.SetSpacing((dx, dy, dz))
    img.SetOrigin(tuple(float(v) for v in case.origin_xyz))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def write_structure_labels(case: SyntheticCase, out_dir: str | Path) -> Path:
    """Write ``labels.nii.gz`` (uint8, model_training.synthetic.haematoma.STRUCTURE_LABELS: 7 = intraventricular
    blood) into ``out_dir``; return its path."""
    path = Path(out_dir) / "labels.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(case_image(case, case.structure_labels), str(path), useCompression=True, compressionLevel=1)
    return path


def write_nifti(case: SyntheticCase, out_dir: str | Path, *, image: bool = True) -> tuple[Path | None, Path]:
    """Write ``image.nii.gz`` (HU, int16; skipped when ``image`` is False) and ``mask.nii.gz`` (uint8) into
    ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_path = out / "image.nii.gz" if image else None
    mask_path = out / "mask.nii.gz"
    if image_path is not None:
        sitk.WriteImage(case_image(case), str(image_path), useCompression=True, compressionLevel=1)
    sitk.WriteImage(case_image(case, case.mask), str(mask_path), useCompression=True, compressionLevel=1)
    return image_path, mask_path
