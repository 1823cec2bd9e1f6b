"""Heads without parenchymal haemorrhage, haemorrhage mimics and the generator's risk ceilings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_training.synthetic.case import generate_case
from model_training.synthetic.growth import expansion_probability, image_risk
from model_training.synthetic.haematoma import STRUCTURE_LABELS
from model_training.synthetic.mimics import PROBABILITIES, draw_mimics

SEED = 515


def test_ich_free_head_has_empty_mask_and_no_label():
    c = generate_case(SEED, 0, ich_free=True, ivh_only=False)
    assert c.mask.sum() == 0 and c.baseline_volume_ml == 0.0 and not c.has_haematoma
    assert c.label is None and c.followup_volume_ml is None and c.risk_true is None and c.risk_image is None
    assert c.location == "none" and all(v == 0 for v in c.markers.values())


def test_ivh_only_head_has_ventricular_blood_but_no_haematoma():
    c = generate_case(SEED, 1, ich_free=True, ivh_only=True)
    assert c.mask.sum() == 0 and c.label is None and c.markers["ivh"] == 1
    ivh = c.structure_labels == STRUCTURE_LABELS["ivh"]
    assert ivh.sum() > 50
    assert 40 <= np.median(c.hu[ivh]) <= 80  # blood density in the dependent ventricle


def test_ich_free_fraction_sets_the_share_of_normal_heads():
    free = [generate_case(SEED, i, ich_free_fraction=0.5, n_slices=20).label is None for i in range(12)]
    assert 2 <= sum(free) <= 10
    assert generate_case(SEED, 0, ich_free_fraction=0.0, n_slices=20).has_haematoma


def test_mimics_are_dense_outside_the_haematoma_and_optional():
    with_mimics = generate_case(SEED, 2, ich_free=True, mimics=True)
    plain = generate_case(SEED, 2, ich_free=True, mimics=False)
    assert with_mimics.mimics and plain.mimics == ()
    changed = with_mimics.hu != plain.hu
    assert changed.sum() > 1000 and with_mimics.mask.sum() == 0
    # calcification / sinus / partial-volume mimics add voxels in the blood range (50-90 HU) inside the head
    blood_like = lambda hu: int(((hu >= 50) & (hu <= 90)).sum())  # noqa: E731
    assert blood_like(with_mimics.hu) > blood_like(plain.hu)


def test_mimic_draws_do_not_depend_on_being_enabled():
    a = draw_mimics(np.random.default_rng(1), enabled=True)
    b = draw_mimics(np.random.default_rng(1), enabled=False)
    assert set(a.present) == set(PROBABILITIES) and not any(b.present.values())


def test_image_risk_averages_the_onset_time_out():
    markers = {"hypodensity": 1, "black_hole": 0, "swirl": 1, "blend": 0, "fluid_level": 0, "irregular_shape": 0,
               "heterogeneous_density": 0, "ivh": 0}
    r = image_risk(markers, 20.0)
    early, late = expansion_probability(markers, 20.0, 0.5), expansion_probability(markers, 20.0, 8.0)
    assert late < r < early
    c = generate_case(SEED, 3, ich_free=False)
    assert c.risk_true == pytest.approx(expansion_probability(c.markers, c.baseline_volume_ml,
                                                              c.onset_to_ct_hours), abs=2e-3)
    assert c.risk_image == pytest.approx(image_risk(c.markers, c.baseline_volume_ml), abs=1e-6)


def test_region_pooling_sees_only_the_haematoma():
    """With haematoma pooling, the classification input changes when the image changes inside the predicted
    clot; the auxiliary outputs have the configured width."""
    from app.model.config import ModelConfig
    from app.model.unet import DualOutputUNet3D

    torch.manual_seed(0)
    cfg = ModelConfig(encoder_widths=(4, 8, 16), bridge_width=16, decoder_widths=(16, 8), cls_width=8,
                      cls_pooling="haematoma", aux_outputs=8)
    model = DualOutputUNet3D(cfg).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    seg, cls, aux = model(x, with_aux=True)
    assert seg.shape == (1, 1, 16, 32, 32) and cls.shape == (1, 1) and aux.shape == (1, 8)
    seg2, cls2 = model(x)
    assert torch.equal(seg, seg2) and torch.equal(cls, cls2)
    assert ModelConfig().fingerprint() == ModelConfig(cls_pooling="global", aux_outputs=0).fingerprint()
    assert cfg.fingerprint() != cfg.model_copy(update={"cls_pooling": "global"}).fingerprint()


def test_masked_bce_ignores_unknown_labels_and_weighs_positives():
    from model_training.training.losses import masked_bce

    logits = torch.tensor([0.0, 2.0, -1.0])
    assert masked_bce(logits, torch.tensor([-1.0, -1.0, -1.0])).item() == 0.0
    only = masked_bce(logits[:1], torch.tensor([1.0])).item()
    assert masked_bce(logits, torch.tensor([1.0, -1.0, -1.0])).item() == pytest.approx(only)
    target = torch.tensor([1.0, 0.0, 0.0])
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weighted = masked_bce(logits, target, pos_weight=3.0)
    assert weighted.item() == pytest.approx(((per * torch.tensor([3.0, 1.0, 1.0])).sum() / 5.0).item())
