"""DICOM and NIfTI ingestion with a quality gate: files / folders / ZIPs / bytes -> one axial CT volume in HU
(LPS, mm; arrays z-y-x).

The pipeline and its refusal precedence are described in :mod:`~app.ingestion.pipeline`; this package only
re-exports the public entry points and types. Importing it installs the log/warning redaction of
:mod:`~app.ingestion.privacy`.
"""

from __future__ import annotations

from app.ingestion.pipeline import InputItem, inspect_inputs, load_series
from app.ingestion.sources import ArchiveLimits
from app.ingestion.types import IngestedSeries, SeriesSummary, SourceSlice

__all__ = [
    "ArchiveLimits",
    "IngestedSeries",
    "InputItem",
    "SeriesSummary",
    "SourceSlice",
    "inspect_inputs",
    "load_series",
]
