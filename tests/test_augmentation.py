"""Augmentation: identity is exact, the mask follows the image, ranges and tenfold bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_training.augmentation import (
    AugmentationPlan,
    affine_theta,
    apply_affine,
    augment_batch,
    random_theta,
)

FOV = (160.0, 112.0, 112.0)


def _blob(shape=(16, 48, 48), centre=(8, 20, 28), radius_vox=(3, 6, 6)) -> torch.Tensor:
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    r = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radius_vox, strict=True))
    return torch.from_numpy((r <= 1).astype(np.float32))[None, None]


def test_identity_transform_is_exact(rng):
    x = torch.from_numpy(rng.normal(size=(1, 1, 8, 12, 10)).astype(np.float32))
    m = (x > 0).float()
    theta = torch.from_numpy(affine_theta(FOV))[None]
    y, mm = apply_affine(x, m, theta)
    assert torch.equal(y, x) and torch.equal(mm, m)


def test_pure_translation_moves_content_by_the_expected_voxels():
    blob = _blob()
    # +1/16 of the z field of view = 1 slice; +4/48 of the x field of view = 4 columns
    theta = torch.from_numpy(affine_theta(FOV, translation_fraction_zyx=(1 / 16, 0.0, 4 / 48)))[None]
    out, _ = apply_affine(blob, None, theta)
    expected = torch.roll(blob, shifts=(1, 4), dims=(2, 4))
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_random_transform_keeps_image_and_mask_aligned(seed):
    image = _blob() * 60.0  # a bright haematoma on an empty background
    mask = _blob().to(torch.uint8)
    theta = torch.from_numpy(random_theta(np.random.default_rng(seed), FOV))[None]
    img_t, mask_t = apply_affine(image, mask, theta)
    assert mask_t.dtype == torch.uint8 and set(torch.unique(mask_t).tolist()) <= {0, 1}
    bright = img_t >= 30.0  # the bright voxels of the transformed image
    covered = (mask_t.bool() & bright).sum() / bright.sum()
    assert covered > 0.95
    # volume changes by the scale factor cubed at most (±10 % -> 0.73 .. 1.33) and the blob is not lost
    ratio = mask_t.sum().item() / mask.sum().item()
    assert 0.6 < ratio < 1.5


def test_rotation_is_rigid_in_millimetres():
    """A 5° rotation about z of the anisotropic grid keeps the in-plane area of a disc (no shear)."""
    mask = _blob(shape=(8, 64, 64), centre=(4, 32, 32), radius_vox=(20, 12, 12))
    theta = torch.from_numpy(affine_theta(FOV, angles_deg_zyx=(5.0, 0.0, 0.0)))[None]
    _, m2 = apply_affine(mask.float(), mask.float(), theta)
    assert abs(m2.sum().item() - mask.sum().item()) / mask.sum().item() < 0.03


def test_tenfold_plan_is_deterministic_and_includes_the_original():
    plan = AugmentationPlan(aug_copies=10, include_original=True, seed=3)
    assert plan.epoch_length(7) == 70
    assert plan.decode(15, 7) == (1, 2)
    assert not plan.is_augmented(0) and plan.is_augmented(1)
    assert np.array_equal(plan.theta_for(0, 1, 0, FOV), affine_theta(FOV))
    a, b = plan.theta_for(2, 1, 3, FOV), plan.theta_for(2, 1, 3, FOV)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, plan.theta_for(2, 1, 4, FOV))
    assert not np.array_equal(a, plan.theta_for(3, 1, 3, FOV))


def test_augment_batch_leaves_unflagged_samples_untouched(rng):
    x = torch.from_numpy(rng.normal(size=(2, 1, 8, 16, 16)).astype(np.float32))
    m = (x > 1).float()
    thetas = torch.stack([torch.from_numpy(random_theta(np.random.default_rng(i), FOV)).float() for i in range(2)])
    y, mm, none = augment_batch(x, m, thetas, torch.tensor([False, True]))
    assert none is None
    assert torch.equal(y[0], x[0]) and torch.equal(mm[0], m[0])
    assert not torch.equal(y[1], x[1])
