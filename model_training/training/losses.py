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


def soft_dice_loss(seg_logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``1 - (2 |P∩T| + eps) / (|P| + |T| + eps)`` with P = sigmoid(logits) (soft).

    ``eps`` (in voxels) keeps the loss defined and smooth for empty masks: an empty target predicted empty costs 0.
    Computed in float32 whatever the autocast dtype.
    """
    p = torch.sigmoid(seg_logits.float()).flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    dice = (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)
    return (1 - dice).mean()


@dataclass
class LossParts:
    total: torch.Tensor
    dice: torch.Tensor
    bce: torch.Tensor


def dual_loss(
    seg_logits: torch.Tensor,
    cls_logits: torch.Tensor,
    mask: torch.Tensor,
    label: torch.Tensor,
    seg_weight: float = 0.9,
    cls_weight: float = 0.1,
) -> LossParts:
    """``seg_weight`` x Dice loss(mask) + ``cls_weight`` x BCE(expansion label). ``label`` has shape (N,) or (N, 1)."""
    dice = soft_dice_loss(seg_logits, mask)
    bce = F.binary_cross_entropy_with_logits(cls_logits.float().reshape(-1), label.float().reshape(-1))
    return LossParts(total=seg_weight * dice + cls_weight * bce, dice=dice, bce=bce)


def hard_dice(pred: np.ndarray, target: np.ndarray, empty: float = 1.0) -> float:
    """Dice of two binary masks of equal shape; ``empty`` when both are empty."""
    a = np.asarray(pred, dtype=bool)
    b = np.asarray(target, dtype=bool)
    s = a.sum() + b.sum()
    if s == 0:
        return float(empty)
    return float(2 * np.logical_and(a, b).sum() / s)
