"""Synthetic head-CT cohort: phantoms with a supratentorial haematoma, NCCT markers, a 24-hour growth model, and
DICOM / NIfTI / manifest writers. Public API::

    generate_case(seed, index, **overrides) -> SyntheticCase
    write_dicom_series(case, out_dir, transfer_syntax=None) -> list[Path]
    write_nifti(case, out_dir) -> (image_path, mask_path)
    write_cohort(n, out_dir, seed, formats=("dicom", "nifti"), workers=1) -> manifest path
"""

from model_training.synthetic.case import SyntheticCase, generate_case
from model_training.synthetic.cohort import MANIFEST_COLUMNS, write_cohort
from model_training.synthetic.dicom_writer import write_dicom_series
from model_training.synthetic.nifti_writer import write_nifti

__all__ = ["MANIFEST_COLUMNS", "SyntheticCase", "generate_case", "write_cohort", "write_dicom_series", "write_nifti"]
