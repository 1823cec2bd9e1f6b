"""Training loss of the paper: 0.9 x soft Dice loss on the mask + 0.1 x binary cross-entropy on the expansion output.

The supplement: "The loss function for segmentation was Dice loss (1 - Dice coefficient), and the loss function
for classification was binary cross-entropy ... in the ratio 9:1 (segmentation: classification)". The network
returns logits; the Dice loss applies the sigmoid itself and BCE uses the numerically stable logits form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def soft_dice_loss(seg_logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``1 - (2 |P∩T| + eps) / (|P| + |T| + eps)`` with P = sigmoid(logits) (soft).

    ``eps`` (in voxels) keeps the loss defined and smooth for empty masks: an empty target predicted empty costs 0.
    ``weight`` (same shape as ``target``, >= 0) makes every sum a weighted sum: a voxel of weight 3 counts as three,
    so a missed voxel of the target or a false positive there costs three times as much. Computed in float32
    whatever the autocast dtype.
    """
    p = torch.sigmoid(seg_logits.float()).flatten(1)
    t = target.float().flatten(1)
    w = torch.ones_like(t) if weight is None else weight.float().flatten(1)
    dice = (2 * (w * p * t).sum(1) + eps) / ((w * p).sum(1) + (w * t).sum(1) + eps)
    return (1 - dice).mean()


@dataclass
class LossParts:
    total: torch.Tensor
    dice: torch.Tensor
    bce: torch.Tensor
    aux: torch.Tensor | None = None


def masked_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the entries whose target is 0 or 1; entries < 0 (unknown: a head without
    a haematoma has no expansion label, a real cohort may lack a marker) are left out. 0 when none is known."""
    x = logits.float().reshape(-1)
    t = target.float().reshape(-1)
    known = t >= 0
    weight = known.float()
    if pos_weight is not None:
        weight = weight * torch.where(t > 0.5, torch.full_like(t, float(pos_weight)), torch.ones_like(t))
    per = F.binary_cross_entropy_with_logits(x, t.clamp(0, 1), reduction="none")
    return (per * weight).sum() / weight.sum().clamp_min(1.0)


def dual_loss(
    seg_logits: torch.Tensor,
    cls_logits: torch.Tensor,
    mask: torch.Tensor,
    label: torch.Tensor,
    seg_weight: float = 0.9,
    cls_weight: float = 0.1,
    *,
    pos_weight: float | None = None,
    aux_logits: torch.Tensor | None = None,
    aux_target: torch.Tensor | None = None,
    aux_weight: float = 0.0,
    voxel_weight: torch.Tensor | None = None,
) -> LossParts:
    """``seg_weight`` x Dice loss(mask) + ``cls_weight`` x BCE(expansion label) [+ ``aux_weight`` x BCE of the
    auxiliary outputs]. ``label`` has shape (N,) or (N, 1); a label < 0 (unknown) adds no classification loss.
    ``pos_weight`` weighs the positive class (class balance); ``voxel_weight`` weighs the Dice loss's voxels."""
    dice = soft_dice_loss(seg_logits, mask, weight=voxel_weight)
    bce = masked_bce(cls_logits, label, pos_weight)
    total = seg_weight * dice + cls_weight * bce
    aux = None
    if aux_logits is not None and aux_target is not None and aux_weight > 0:
        aux = masked_bce(aux_logits, aux_target)
        total = total + aux_weight * aux
    return LossParts(total=total, dice=dice, bce=bce, aux=aux)


def hard_dice(pred: np.ndarray, target: np.ndarray, empty: float = 1.0) -> float:
    """Dice of two binary masks of equal shape; ``empty`` when both are empty."""
    a = np.asarray(pred, dtype=bool)
    b = np.asarray(target, dtype=bool)
    s = a.sum() + b.sum()
    if s == 0:
        return float(empty)
    return float(2 * np.logical_and(a, b).sum() / s)
