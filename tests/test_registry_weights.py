"""Versioned weights: save -> load verifies; corrupted, edited or mismatched files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.model.config import ModelConfig
from app.model.unet import DualOutputUNet3D, count_parameters
from app.preprocessing.plans import Plans
from app.weights.registry import (
    WeightsError,
    load_weights,
    read_registry,
    register_in_registry,
    save_weights,
)

CFG = ModelConfig(encoder_widths=(4, 8, 16), bridge_width=32, decoder_widths=(16, 8), cls_width=16)
PLANS = Plans(name="test-plans", matrix_zyx=(16, 48, 48))


def _register(weights: Path, version: str = "1.0.0", default: bool = False) -> Path:
    torch.manual_seed(0)
    model = DualOutputUNet3D(CFG)
    out = save_weights(model, PLANS, CFG, weights / f"m-{version}",
                       {"name": "m", "version": version, "threshold": 0.37, "intended_use": "test"}, "# card\n")
    register_in_registry(weights, "m", version, "2024-01-01T00:00:00Z", default)
    return out


def test_round_trip_and_registry(tmp_path):
    out = _register(tmp_path)
    _register(tmp_path, "1.1.0")
    reg = read_registry(tmp_path)
    assert reg["default"] == "m-1.0.0" and [m["id"] for m in reg["models"]] == ["m-1.0.0", "m-1.1.0"]
    loaded = load_weights(tmp_path)
    assert loaded.version == "1.0.0" and loaded.threshold == pytest.approx(0.37) and loaded.plans == PLANS
    assert loaded.config == CFG and loaded.path == out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"] == count_parameters(loaded.model)
    assert set(manifest["files"]) == {"model.safetensors", "MODEL_CARD.md"}
    assert load_weights(tmp_path, "1.1.0").version == "1.1.0"  # bare version resolves when unique
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path, "9.9.9")
    assert info.value.code == "not_found"
    with pytest.raises(WeightsError) as info:
        _register(tmp_path)  # versions are immutable
    assert info.value.code == "exists"


def test_corrupted_byte_is_refused(tmp_path):
    out = _register(tmp_path)
    f = out / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path)
    assert info.value.code == "checksum_mismatch" and "model.safetensors" in str(info.value)


def test_edited_plans_are_refused(tmp_path):
    out = _register(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m["plans"]["matrix_zyx"] = [32, 256, 256]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path)
    assert info.value.code == "plans_mismatch" and "manifest.json" in info.value.message


def test_weights_not_matching_the_config_are_refused(tmp_path):
    out = _register(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    other = ModelConfig(encoder_widths=(4, 8, 16), bridge_width=64, decoder_widths=(16, 8), cls_width=16)
    m["model_config"] = other.model_dump(mode="json")
    m["model_config_fingerprint"] = other.fingerprint()
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path)
    assert info.value.code == "config_mismatch" and "bridge" in info.value.message and "shape" in info.value.message


def test_consistent_checksum_but_wrong_tensors_is_refused(tmp_path):
    """Even with a recomputed checksum, a state dict with a missing tensor cannot load."""
    from app.weights.registry import sha256_file

    out = _register(tmp_path)
    f = out / "model.safetensors"
    state = load_file(str(f))
    state.pop("cls_head.bias")
    save_file(state, str(f))
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["model.safetensors"] = sha256_file(f)
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError, match="missing tensors") as info:
        load_weights(tmp_path)
    assert info.value.code == "config_mismatch"


def test_no_default_and_pickle_are_refused(tmp_path):
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path)
    assert info.value.code == "not_found"
    out = _register(tmp_path)
    (out / "extra.pt").write_bytes(b"x")
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path)
    assert info.value.code == "unsafe_format"
