"""Files of a run directory besides checkpoints and weights: config.json (preset, plans, provenance), metrics.csv,
and the provenance helpers (git commit, hardware)."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from app.preprocessing.plans import Plans
from model_training.training.presets import Preset

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_dice_loss", "train_bce", "val_dice", "val_auc", "seconds")


def git_commit(repo_dir: Path | None = None) -> str | None:
    """The checked-out commit of the project (None outside a git checkout); "+dirty" when files changed."""
    cwd = repo_dir or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def hardware_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        return f"{torch.cuda.get_device_name(idx)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv: one row per epoch (:data:`METRIC_FIELDS`; empty where a value is None)."""
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})


def init_weights_info(path: Path | None) -> dict[str, str] | None:
    """Provenance of the starting weights of a fine-tuning run (path and sha256), or None."""
    if path is None:
        return None
    import hashlib

    return {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def run_config(
    preset: Preset, plans: Plans, seed: int, init_weights: Path | None, manifest_info: dict[str, Any],
    n: dict[str, int],
) -> dict[str, Any]:
    """The config.json of a run before training (completed by the trainer when the run finishes)."""
    return {
        "preset": preset.model_dump(mode="json"),
        "plans": plans.model_dump(mode="json"),
        "plans_fingerprint": plans.fingerprint(),
        "model_config": preset.model.model_dump(mode="json"),
        "manifest": manifest_info,
        "seed": seed,
        "init_weights": init_weights_info(init_weights),
        "n_cases": n,
    }
