"""The training data: cached cases (model grid, z-y-x) x augmentation copies, with the expansion label and the
auxiliary targets, and the positive-class weight of the classification loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from app.preprocessing.plans import Plans
from model_training.augmentation import AugmentationPlan
from model_training.cohort.cache import DARK_PART_NAMES
from model_training.cohort.manifest import CaseRecord
from model_training.synthetic.haematoma import STRUCTURE_LABELS


def dark_part_weights(dark_weight: float, part_weights: Mapping[str, float] | None = None) -> dict[int, float]:
    """The extra Dice weight of each darker part by its STRUCTURE_LABELS code: ``dark_weight`` unless
    ``part_weights`` names the part; raises ``ValueError`` naming an unknown part."""
    named = dict(part_weights or {})
    unknown = sorted(set(named) - set(DARK_PART_NAMES))
    if unknown:
        raise ValueError(f"unknown darker part(s) {unknown}; known: {', '.join(DARK_PART_NAMES)}")
    return {STRUCTURE_LABELS[name]: float(named.get(name, dark_weight)) for name in DARK_PART_NAMES}


class CachedCaseDataset(Dataset):
    """Cached cases x ``aug_copies``; every item carries its augmentation ``theta`` (applied on the device).

    Items: ``image`` float32 (1, D, H, W), ``mask`` float32 (1, D, H, W), ``weight`` float32 (1, D, H, W) the
    voxel weights of the Dice loss (1 + ``dark_weight`` on the clot's darker parts, or the part's own entry of
    ``part_weights`` (keyed by STRUCTURE_LABELS name), + ``ivh_weight`` on the intraventricular blood, where the cache
    entry has those maps; 1 elsewhere), ``label`` float32 scalar (-1: no
    expansion label, a head without haematoma), ``aux`` float32 (n_aux,) auxiliary targets (-1 unknown),
    ``theta`` float32 (3, 4), ``augmented`` bool, ``index`` int (case index).
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int | None], plans: Plans,
                 aug: AugmentationPlan | None, aux: Sequence[Sequence[float]] | None = None, *,
                 dark_weight: float = 0.0, ivh_weight: float = 0.0, part_weights: Mapping[str, float] | None = None):
        self.paths = [Path(p) for p in paths]
        self.part_weights = dark_part_weights(dark_weight, part_weights)
        self.ivh_weight = float(ivh_weight)
        self.labels = [-1 if v is None else int(v) for v in labels]
        self.aux = [list(a) for a in aux] if aux is not None else [[] for _ in self.paths]
        self.fov = tuple(float(f) for f in plans.fov_mm_zyx)
        self.aug = aug
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths) * (self.aug.aug_copies if self.aug else 1)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.paths)
        case, copy = (self.aug.decode(i, n) if self.aug else (i, 0))
        with np.load(self.paths[case]) as z:
            image = torch.from_numpy(np.ascontiguousarray(z["tensor"], dtype=np.float32))[None]
            mask = torch.from_numpy(np.ascontiguousarray(z["mask"], dtype=np.float32))[None]
            weight = np.ones(mask.shape[1:], np.float32)
            if "dark" in z.files and any(self.part_weights.values()):
                table = np.zeros(256, np.float32)
                for code, w in self.part_weights.items():
                    table[code] = w
                weight += table[z["dark"]]
            if self.ivh_weight and "ivh" in z.files:
                weight += self.ivh_weight * z["ivh"].astype(np.float32)
            weight = torch.from_numpy(weight)[None]
        augmented = bool(self.aug and self.aug.is_augmented(copy))
        if augmented:
            theta = torch.from_numpy(self.aug.theta_for(self.epoch, case, copy, self.fov)).float()  # type: ignore[union-attr]
        else:
            theta = torch.eye(3, 4)
        return {
            "image": image,
            "mask": mask,
            "weight": weight,
            "label": torch.tensor(float(self.labels[case])),
            "aux": torch.tensor(self.aux[case], dtype=torch.float32),
            "theta": theta,
            "augmented": torch.tensor(augmented),
            "index": case,
        }


def aux_targets(case: CaseRecord, n_aux: int) -> list[float]:
    """Auxiliary targets of a case: the NCCT markers and intraventricular extension (MARKER_FLAGS order) of a
    case with a haematoma, -1 where unknown (a head without haematoma, or a marker the manifest leaves empty)."""
    from model_training.ncct_markers import MARKER_FLAGS

    if n_aux == 0:
        return []
    if n_aux != len(MARKER_FLAGS):
        raise ValueError(f"aux_outputs must be 0 or {len(MARKER_FLAGS)} (the markers {', '.join(MARKER_FLAGS)})")
    if not case.has_haematoma:
        return [-1.0] * n_aux
    return [-1.0 if case.markers.get(m) is None else float(case.markers[m]) for m in MARKER_FLAGS]


def class_pos_weight(setting: float | str | None, labels: Sequence[int | None]) -> float | None:
    """The positive-class weight of the classification loss: ``"balanced"`` = negatives / positives of the
    labelled training cases."""
    if setting != "balanced":
        return None if setting is None else float(setting)
    known = [y for y in labels if y is not None]
    pos = sum(known)
    return float((len(known) - pos) / pos) if pos else None
