"""Shared set-up of training runs: preset (with command-line overrides), manifest, temporal split."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from model_training.cohort.manifest import PAPER_CUTOFF, CaseRecord, Manifest, read_manifest, temporal_split
from model_training.training.presets import Preset, get_preset


def override_preset(preset: Preset, epochs: int | None = None, val_fraction: float | None = None) -> Preset:
    """A copy of ``preset`` with the schedule overrides applied (milestones beyond the new end are kept harmless)."""
    updates: dict[str, Any] = {}
    if epochs is not None:
        updates["epochs"] = epochs
    if val_fraction is not None:
        updates["val_fraction"] = val_fraction
    if not updates:
        return preset
    schedule = preset.schedule.model_validate({**preset.schedule.model_dump(), **updates})
    return preset.model_copy(update={"schedule": schedule})


def manifest_info(manifest: Manifest, cutoff: dt.date) -> dict[str, Any]:
    return {"path": str(manifest.path), "sha256": manifest.sha256, "fingerprint": manifest.fingerprint,
            "n_cases": len(manifest.cases), "cutoff": cutoff.isoformat()}


def prepare_training(
    manifest_path: Path, preset_name: str, *, cutoff: dt.date = PAPER_CUTOFF, inclusive: bool = False,
    epochs: int | None = None, val_fraction: float | None = None,
) -> tuple[Preset, Manifest, list[CaseRecord], list[CaseRecord], dict[str, Any]]:
    """(preset, manifest, train cases, test cases, manifest info for config.json)."""
    preset = override_preset(get_preset(preset_name), epochs, val_fraction)
    manifest = read_manifest(manifest_path, inclusive=inclusive)
    train, test = temporal_split(manifest.cases, cutoff)
    if not train:
        raise ValueError(f"no admissions before the cut-off {cutoff} in {manifest_path}")
    return preset, manifest, train, test, manifest_info(manifest, cutoff)
