"""Predictions on cached cases (model grid, z-y-x) during and after training: expansion probability, mask Dice
at the plans' threshold, and the AUC over the labelled cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.model.device import training_autocast
from app.model.unet import DualOutputUNet3D
from model_training.training.losses import hard_dice


@torch.no_grad()
def predict_cached(
    model: DualOutputUNet3D,
    paths: Sequence[Path],
    case_ids: Sequence[str],
    labels: Sequence[int],
    threshold: float,
    device: str,
    amp: bool = False,
) -> list[dict[str, Any]]:
    """Predict cached cases: expansion probability and mask Dice (at ``threshold``) on the model grid."""
    model.eval()
    out = []
    for p, cid, y in zip(paths, case_ids, labels, strict=True):
        with np.load(p) as z:
            x = torch.from_numpy(np.ascontiguousarray(z["tensor"], dtype=np.float32))[None, None].to(device)
            mask = z["mask"].astype(bool)
        ctx, _ = training_autocast(device, amp)
        with ctx:
            seg, cls = model(x)
        prob_map = torch.sigmoid(seg.float())[0, 0].cpu().numpy()
        prob = float(torch.sigmoid(cls.float()).reshape(-1)[0].cpu())
        out.append({
            "case_id": cid,
            "label": None if y is None else int(y),
            "probability": prob,
            "dice": hard_dice(prob_map >= threshold, mask),
            "predicted_voxels": int((prob_map >= threshold).sum()),
            "true_voxels": int(mask.sum()),
        })
    return out


def auc_or_none(labels: Sequence[int | None], scores: Sequence[float]) -> float | None:
    """ROC AUC of ``scores`` over the labelled cases (``None`` labels left out); None with a single class."""
    pairs = [(y, s) for y, s in zip(labels, scores, strict=True) if y is not None]
    labels, scores = [y for y, _ in pairs], [s for _, s in pairs]
    if len(set(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))
