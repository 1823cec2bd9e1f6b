"""The result document of one prediction as pydantic models: the JSON of ``POST /v1/predictions`` and, without
``links``, the ``result.json`` of ``python -m app predict``. No field carries a patient name, ID or birth date.

Built by :func:`app.result.build_document`; :mod:`app.api.schemas` re-exports these models. Units: volumes in mL,
spacing in mm (z, y, x), coordinates LPS, probabilities 0-1, timings in ms.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.errors import AbstainReason


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="sha256 of the weights file")


class WarningItem(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class InputSummary(BaseModel):
    study_instance_uid: str
    series_instance_uid: str
    slice_count: int = Field(description="Source instances in the analysed series (NIfTI: slices of the volume)")
    source_kind: Literal["dicom", "nifti"] = Field("dicom", description="What was uploaded: a DICOM series or a "
                                                   "NIfTI volume (no UIDs, no source instances, no DICOM SEG)")
    spacing_mm: tuple[float, float, float] = Field(description="Analysis grid spacing (z, y, x) in mm")
    onset_to_ct_hours: float | None = None
    warnings: list[WarningItem] = Field(default_factory=list)


class ProbabilityInterval(BaseModel):
    level: float = Field(description="Nominal coverage, e.g. 0.9")
    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)
    passes: int = Field(description="Augmented passes besides the primary one")


class Abstain(BaseModel):
    value: bool = Field(description="true: do not rely on this prediction (see reasons)")
    reasons: list[AbstainReason] = Field(default_factory=list)


class Expansion(BaseModel):
    probability: float | None = Field(ge=0, le=1, description="Calibrated expansion probability; null when no "
                                      "haematoma was detected (see reason)")
    raw_probability: float = Field(ge=0, le=1, description="Uncalibrated output of the weights' expansion model")
    network_probability: float = Field(ge=0, le=1, description="The network's own classification output (the "
                                       "paper's classifier), an input of the expansion model")
    threshold: float = Field(description="Decision threshold on the calibrated probability")
    predicted: bool | None = Field(description="probability >= threshold; null when no haematoma was detected")
    reason: str | None = Field(None, description="Why probability is null: no_haematoma_detected")
    definition: str
    interval: ProbabilityInterval | None = Field(None, description="Test-time-augmentation interval of the "
                                                 "calibrated probability; null without TTA or detection")


class Haematoma(BaseModel):
    detected: bool = Field(description="The detection rule of the weights accepted the segmented mask; when "
                           "false the mask is empty")
    volume_ml: float = Field(description="Mask volume on the analysis (original) grid, mL")
    abc2_volume_ml: float = Field(description="ABC/2 estimate from the mask, mL")
    voxel_count: int
    touches_fov_edge: bool = Field(description="The mask reaches the edge of the analysed field of view")
    infratentorial: bool = Field(description="Heuristic (centroid offset from the brain centroid, LPS mm): the "
                                 "haematoma lies probably below the tentorium")
    measurements: dict[str, float] = Field(default_factory=dict, description="Clot measurements on the analysis "
                                           "grid (HU, mL; app/model/clot_features.py); empty when not detected")
    volume_interval_ml: tuple[float, float] | None = Field(
        None, description="Test-time-augmentation interval of volume_ml (mL, same level as expansion.interval); "
        "null without TTA or detection")


class MarkerFinding(BaseModel):
    present: bool
    measurement: str = Field(description="Name of the measurement that decides the marker: one measurement "
                             "(app/model/ncct_markers.py) or, with a learned marker reader, the marker's "
                             "probability from all of them (app/model/marker_reader.py)")
    value: float
    unit: str
    threshold: float = Field(description="present when value >= threshold")


class BatPoints(BaseModel):
    blend: int
    hypodensity: int
    onset_lt_2_5h: int | None = Field(description="2 when onset-to-CT < 2.5 h, 0 when later, null when unknown")


class Bat(BaseModel):
    score: int = Field(ge=0, le=5, description="BAT score (Morotti 2018): blend 1 + hypodensity 2 + onset < 2.5 h 2")
    points: BatPoints
    complete: bool = Field(description="false without onset_to_ct_hours: image points only")


class Links(BaseModel):
    self: str
    mask_nifti: str
    seg_dicom: str | None = Field(None, description="null when the input has no DICOM source instances (NIfTI)")
    overlay_png: str
    sr_dicom: str | None = Field(None, description="DICOM SR (TID 1500 measurement report); null without DICOM "
                                 "source instances (NIfTI)")
    summary_dicom: str | None = Field(None, description="Secondary-capture summary image; null without DICOM "
                                      "source instances (NIfTI)")


class PredictionResponse(BaseModel):
    id: str
    model: ModelRef
    input: InputSummary
    expansion: Expansion
    haematoma: Haematoma
    ncct_markers: dict[str, MarkerFinding] | None = Field(
        None, description="The seven NCCT markers (Supplemental Table 2) decided from the image; null when no "
        "haematoma was detected or the weights do not assess markers")
    bat: Bat | None = Field(None, description="BAT score from the image markers and onset_to_ct_hours; null "
                            "when ncct_markers is null")
    links: Links
    timings_ms: dict[str, float]
    abstain: Abstain | None = Field(None, description="Whether to abstain from this prediction, and why")
