"""model-info: stage shapes of the supplement's network, truthful parameter counts, and the CLI command."""

from __future__ import annotations

import json

import pytest
import torch

from app.cli import main
from app.model.config import ModelConfig
from app.model.info import PAPER_PARAMETER_COUNT, model_info
from app.model.unet import DualOutputUNet3D, count_parameters

# Supplement: 32x256x256 (16) -> 16x128x128 (32) -> 8x64x64 (64) -> bridge 8x64x64 (128) -> 16x128x128 (64)
# -> 32x256x256 (32); classification head 128 units -> 1
SUPPLEMENT_STAGES = {
    "encoder.0": [1, 16, 32, 256, 256],
    "encoder.1": [1, 32, 16, 128, 128],
    "encoder.2": [1, 64, 8, 64, 64],
    "bridge": [1, 128, 8, 64, 64],
    "decoder.0.convs": [1, 64, 16, 128, 128],
    "decoder.1.convs": [1, 32, 32, 256, 256],
    "seg_head": [1, 1, 32, 256, 256],
    "cls_head.convs": [1, 128, 8, 64, 64],
    "cls_head.global_avg_pool": [1, 128],
    "cls_head.dense": [1, 1],
}


def test_default_model_info_matches_the_supplement_stage_shapes():
    info = model_info()
    shapes = {row["name"]: row["shape"] for row in info["stages"]}
    for name, shape in SUPPLEMENT_STAGES.items():
        assert shapes[name] == shape, name
    assert info["input_shape"] == [1, 1, 32, 256, 256]
    assert info["outputs"] == {"segmentation_logits": [1, 1, 32, 256, 256], "classification_logits": [1, 1]}


def test_parameter_counts_are_true_and_add_up():
    info = model_info(ModelConfig(), (32, 256, 256))
    params = info["parameters"]
    real = count_parameters(DualOutputUNet3D(ModelConfig()))
    assert params["total"] == real == params["trainable"]
    assert sum(params["by_part"].values()) == real
    assert set(params["by_part"]) == {"encoder", "bridge", "decoder", "seg_head", "cls_head"}
    assert params["paper_stated"] == PAPER_PARAMETER_COUNT == 3_802_578
    assert params["difference_from_paper"] == real - 3_802_578
    assert params["by_part"]["seg_head"] == 32 + 1  # 1x1x1 convolution 32 -> 1 with bias
    assert params["by_part"]["cls_head"] == 2 * 27 * 128 * 128 + 2 * 2 * 128 + 128 + 1  # 2 convs + IN + dense
    assert sum(row["parameters"] for row in info["stages"]) == real


def test_model_info_follows_config_and_matrix():
    cfg = ModelConfig(
        encoder_widths=(8, 16, 32), decoder_widths=(16, 8), bridge_width=32, cls_width=32, norm="batch"
    )
    info = model_info(cfg, (16, 64, 96))
    shapes = {row["name"]: row["shape"] for row in info["stages"]}
    assert shapes["encoder.2"] == [1, 32, 4, 16, 24]
    assert shapes["decoder.1.convs"] == [1, 8, 16, 64, 96]
    assert shapes["cls_head.global_avg_pool"] == [1, 32]
    assert info["parameters"]["total"] == count_parameters(DualOutputUNet3D(cfg))
    with pytest.raises(ValueError, match="divisible"):
        model_info(cfg, (16, 64, 98))


def test_model_info_cli_prints_json(capsys):
    assert main(["model-info", "--matrix", "32", "96", "96"]) == 0
    report = json.loads(capsys.readouterr().out)
    shapes = {row["name"]: row["shape"] for row in report["stages"]}
    assert shapes["bridge"] == [1, 128, 8, 24, 24]
    assert report["parameters"]["total"] == count_parameters(DualOutputUNet3D())
    assert main(["model-info", "--matrix", "32", "96", "97"]) == 2


def test_model_info_cli_refuses_unreadable_weights_dir(tmp_path, capsys):
    assert main(["model-info", "--weights-dir", str(tmp_path / "missing")]) == 2
    assert "model-info" in capsys.readouterr().err


def test_meta_device_forward_is_shape_only():
    """model_info must not allocate real activations (32x256x256 would need gigabytes)."""
    with torch.device("meta"):
        model = DualOutputUNet3D()
    assert all(p.is_meta for p in model.parameters())
