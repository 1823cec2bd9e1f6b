"""The paper's preprocessing (Zhong et al. 2021, supplement) and its geometric inverse.

``preprocess(image, plans)`` turns an HU volume into the model's input tensor; ``probabilities_to_reference``
and ``mask_to_source_slices`` map results back onto the analysis grid and the original DICOM instances.
"""

from app.preprocessing.inverse import mask_to_source_slices, probabilities_to_reference
from app.preprocessing.pipeline import PreprocessedCase, model_grid, preprocess, resample_label_to_model_grid
from app.preprocessing.plans import PAPER_PLANS, Plans, SkullStripSettings
from app.preprocessing.skull_strip import brain_mask

__all__ = [
    "PAPER_PLANS",
    "Plans",
    "PreprocessedCase",
    "SkullStripSettings",
    "brain_mask",
    "mask_to_source_slices",
    "model_grid",
    "preprocess",
    "probabilities_to_reference",
    "resample_label_to_model_grid",
]
