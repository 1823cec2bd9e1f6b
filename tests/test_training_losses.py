"""Loss: 0.9 x soft Dice (sigmoid probabilities) + 0.1 x BCE on the expansion output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_training.training.losses import dual_loss, hard_dice, soft_dice_loss


def test_soft_dice_matches_hand_computation(rng):
    logits = torch.from_numpy(rng.normal(size=(2, 1, 4, 5, 6)).astype(np.float32))
    target = (torch.from_numpy(rng.random(size=(2, 1, 4, 5, 6))) > 0.7).float()
    p = torch.sigmoid(logits)
    expected = np.mean([
        1 - (2 * (p[i] * target[i]).sum() + 1) / (p[i].sum() + target[i].sum() + 1) for i in range(2)
    ])
    assert soft_dice_loss(logits, target).item() == pytest.approx(float(expected), rel=1e-6)


def test_soft_dice_near_zero_for_perfect_prediction_and_near_one_for_disjoint():
    target = torch.zeros(1, 1, 4, 8, 8)
    target[..., 2:6, 2:6] = 1
    assert soft_dice_loss((target * 2 - 1) * 50, target).item() < 1e-3
    assert soft_dice_loss((0.5 - target) * 100, target).item() > 0.95
    assert soft_dice_loss(torch.full_like(target, -50.0), torch.zeros_like(target)).item() < 1e-3


def test_dual_loss_weights_and_gradients(rng):
    seg = torch.from_numpy(rng.normal(size=(1, 1, 4, 6, 6)).astype(np.float32)).requires_grad_()
    cls = torch.tensor([[0.3]], requires_grad=True)
    mask = (torch.from_numpy(rng.random(size=(1, 1, 4, 6, 6))) > 0.5).float()
    label = torch.tensor([1.0])
    parts = dual_loss(seg, cls, mask, label)
    bce = F.binary_cross_entropy(torch.sigmoid(cls.detach()).reshape(-1), label)
    assert parts.bce.item() == pytest.approx(bce.item(), rel=1e-6)
    assert parts.total.item() == pytest.approx(0.9 * parts.dice.item() + 0.1 * parts.bce.item(), rel=1e-6)
    parts.total.backward()
    assert seg.grad is not None and cls.grad is not None and cls.grad.item() < 0  # pushes towards label 1


def test_hard_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert hard_dice(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert hard_dice(a, b) == pytest.approx(0.5)
