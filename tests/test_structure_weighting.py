"""Structure-weighted segmentation loss: the cache keeps the clot's darker parts and the intraventricular blood on
the model grid, the dataset turns them into Dice voxel weights, augmentation moves the weights with the image,
and the weighted Dice charges a miss of a heavy voxel more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.preprocessing.plans import Plans
from model_training.augmentation import augment_batch, random_theta
from model_training.cli import main
from model_training.cohort.cache import DARK_PARTS, build_cache, cache_key
from model_training.cohort.manifest import read_manifest
from model_training.synthetic.haematoma import STRUCTURE_LABELS
from model_training.training.data import CachedCaseDataset, dark_part_weights
from model_training.training.losses import soft_dice_loss
from model_training.training.presets import Schedule, get_preset

FOV = (160.0, 112.0, 112.0)
SMOKE_PLANS = Plans(name="zhong2021-smoke48", matrix_zyx=(16, 48, 48), interpolation="linear")


def test_weighted_dice_equals_unweighted_with_unit_weights_and_charges_heavy_misses_more(rng):
    logits = torch.from_numpy(rng.normal(size=(2, 1, 4, 6, 6)).astype(np.float32))
    target = (torch.from_numpy(rng.random(size=(2, 1, 4, 6, 6))) > 0.6).float()
    plain = soft_dice_loss(logits, target)
    assert soft_dice_loss(logits, target, weight=torch.ones_like(target)).item() == pytest.approx(plain.item())

    target = torch.zeros(1, 1, 4, 8, 8)
    target[..., 1:3, 2:6, 2:6] = 1
    missed = torch.zeros_like(target)
    missed[..., 1:3, 2:6, 2:4] = 1  # half of the target the prediction leaves out
    pred_logits = (target - missed) * 100 - 50
    heavy = 1 + 2 * missed
    light = 1 + 2 * (target - missed)
    assert soft_dice_loss(pred_logits, target, weight=heavy) > soft_dice_loss(pred_logits, target) + 0.1
    assert soft_dice_loss(pred_logits, target, weight=light) < soft_dice_loss(pred_logits, target)


def test_augment_batch_moves_the_weights_with_the_image_and_keeps_unit_weight_outside(rng):
    x = torch.from_numpy(rng.normal(size=(2, 1, 8, 16, 16)).astype(np.float32))
    m = (x > 1).float()
    w = torch.ones_like(x)
    w[1, :, 3:5, 6:10, 6:10] = 3.0
    thetas = torch.stack([torch.from_numpy(random_theta(np.random.default_rng(i), FOV)).float() for i in range(2)])
    y, mm, ww = augment_batch(x, m, thetas, torch.tensor([False, True]), w)
    assert torch.equal(ww[0], w[0]) and torch.equal(y[0], x[0])
    assert not torch.equal(ww[1], w[1])
    assert float(ww[1].min()) >= 1.0 - 1e-5 and float(ww[1].max()) > 1.5
    _, _, ones = augment_batch(x, m, thetas, torch.tensor([True, True]), torch.ones_like(x))
    assert torch.allclose(ones, torch.ones_like(ones), atol=1e-5)  # no zero weight where the shift leaves the FOV


@pytest.fixture(scope="module")
def structured_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("structured")
    assert main(["synth", "--n", "6", "--out", str(out), "--seed", "7", "--formats", "nifti", "--workers", "1",
                 "--ich-free-fraction", "0"]) == 0
    return out / "manifest.csv"


def test_cache_keeps_dark_parts_inside_and_ivh_outside_the_mask_and_dataset_weighs_them(structured_cohort, tmp_path):
    cases = read_manifest(structured_cohort).cases
    assert all(c.structure_labels is not None for c in cases)
    paths = build_cache(cases, SMOKE_PLANS, tmp_path, workers=1, progress=False)
    dark_total = 0
    for p in paths:
        with np.load(p) as z:
            mask, dark, ivh = z["mask"].astype(bool), z["dark"].astype(bool), z["ivh"].astype(bool)
        dark_total += int(dark.sum())
        assert (dark & ~mask).sum() <= 0.1 * max(int(dark.sum()), 1)  # the darker parts belong to the clot
        assert (ivh & mask).sum() <= 0.1 * max(int(ivh.sum()), 1)  # the ventricle's blood is not in the mask
    assert dark_total > 0

    assert set(np.unique(np.concatenate([np.load(p)["dark"].ravel() for p in paths]))) <= {0, *DARK_PARTS}

    data = CachedCaseDataset(paths, [c.label for c in cases], SMOKE_PLANS, None, dark_weight=2.0, ivh_weight=1.0)
    per_part = CachedCaseDataset(paths, [c.label for c in cases], SMOKE_PLANS, None, dark_weight=2.0,
                                 part_weights={"fluid_hypo": 6.0, "swirl": 0.0})
    plain = CachedCaseDataset(paths, [c.label for c in cases], SMOKE_PLANS, None)
    for i, p in enumerate(paths):
        with np.load(p) as z:
            dark, ivh = z["dark"], z["ivh"]
        assert np.allclose(data[i]["weight"][0].numpy(), 1 + 2.0 * (dark > 0) + 1.0 * ivh)
        expected = np.where(dark == STRUCTURE_LABELS["fluid_hypo"], 7.0,
                            np.where(dark == STRUCTURE_LABELS["swirl"], 1.0, 1 + 2.0 * (dark > 0)))
        assert np.allclose(per_part[i]["weight"][0].numpy(), expected)
        assert torch.equal(plain[i]["weight"], torch.ones_like(plain[i]["weight"]))


def test_part_weights_must_name_a_darker_part():
    with pytest.raises(ValueError, match="unknown darker part"):
        Schedule(part_weights={"haematoma": 3.0})
    with pytest.raises(ValueError, match="unknown darker part"):
        dark_part_weights(1.0, {"ivh": 3.0})
    assert not Schedule().weighs_structures and Schedule(part_weights={"swirl": 1.0}).weighs_structures


def test_cache_key_changes_with_the_structure_labels(structured_cohort):
    case = read_manifest(structured_cohort).cases[0]
    with_labels = cache_key(case, SMOKE_PLANS)
    without = cache_key(type(case)(**{**case.__dict__, "structure_labels": None}), SMOKE_PLANS)
    assert with_labels != without


def test_structure_finetune_presets_weigh_dark_parts_and_ivh():
    sched = get_preset("cpu-structure-finetune").schedule
    assert sched.dark_weight > 0 and sched.ivh_weight > 0
    later = get_preset("cpu-dark-parts-finetune").schedule
    assert later.part_weights["fluid_hypo"] > later.dark_weight and later.lr < sched.lr
    assert get_preset("cpu-region-pooling").schedule.dark_weight == 0
