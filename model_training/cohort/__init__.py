"""Cohort input: the manifest CSV (validation, labels, temporal split) and the preprocessed-tensor cache."""

from model_training.cohort.manifest import (
    MARKER_COLUMNS,
    CaseRecord,
    Manifest,
    ManifestError,
    read_manifest,
    temporal_split,
)

__all__ = ["MARKER_COLUMNS", "CaseRecord", "Manifest", "ManifestError", "read_manifest", "temporal_split"]
