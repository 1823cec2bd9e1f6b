"""Response models of the HTTP API (pydantic). No field carries a patient name, ID or birth date."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
    slice_count: int = Field(description="Source instances in the analysed series")
    spacing_mm: tuple[float, float, float] = Field(description="Analysis grid spacing (z, y, x) in mm")
    onset_to_ct_hours: float | None = None
    warnings: list[WarningItem] = Field(default_factory=list)


class Expansion(BaseModel):
    probability: float = Field(ge=0, le=1)
    threshold: float
    predicted: bool
    definition: str


class Haematoma(BaseModel):
    volume_ml: float = Field(description="Mask volume on the analysis (original) grid, mL")
    abc2_volume_ml: float = Field(description="ABC/2 estimate from the mask, mL")
    voxel_count: int
    touches_fov_edge: bool = Field(description="The mask reaches the edge of the analysed field of view")


class Links(BaseModel):
    self: str
    mask_nifti: str
    seg_dicom: str
    overlay_png: str


class PredictionResponse(BaseModel):
    id: str
    model: ModelRef
    input: InputSummary
    expansion: Expansion
    haematoma: Haematoma
    links: Links
    timings_ms: dict[str, float]


class HealthResponse(BaseModel):
    status: str
    detail: str | None = None
