"""Pieces of the benchmark harness (bench/), on small inputs: the full ``bench/run.py --quick`` takes minutes on
2 CPU cores (a 32x256x256 forward pass alone is 10-25 s), so it is not run here.

Budget: < 60 s on 2 CPU cores. No timing assertions: timings are only checked to be positive and finite.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from app.model.config import ModelConfig  # noqa: E402
from app.model.runtime import InferenceRunner  # noqa: E402
from app.model.unet import DualOutputUNet3D  # noqa: E402
from app.preprocessing.plans import Plans  # noqa: E402
from bench import forward as fwd  # noqa: E402
from bench import pipeline  # noqa: E402

SMALL = ModelConfig(encoder_widths=(4, 8, 16), bridge_width=16, decoder_widths=(8, 4), cls_width=8)


def _model() -> DualOutputUNet3D:
    torch.manual_seed(0)
    m = DualOutputUNet3D(SMALL).eval()
    with torch.no_grad():
        m.seg_head.bias.fill_(-0.3)
    return m


def test_forward_flops_match_hand_count_for_a_single_conv() -> None:
    conv = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1, bias=False)
    # 2 FLOPs per multiply-add: out voxels x out channels x (in channels x 27)
    assert fwd.forward_flops(conv, (4, 8, 8)) == 2 * (4 * 8 * 8) * 2 * 27


def test_forward_flops_scale_with_voxels() -> None:
    m = _model()
    small, big = fwd.forward_flops(m, (8, 16, 16)), fwd.forward_flops(m, (8, 32, 32))
    # convolutions scale with the voxel count; only the tiny classification Linear layer does not
    assert small > 0 and big == pytest.approx(4 * small, rel=1e-3)


def test_matmul_rate_and_forward_report_are_finite() -> None:
    rate = fwd.matmul_flop_rate(n=256, repeats=2)
    assert math.isfinite(rate) and rate > 0
    runner = InferenceRunner(_model(), "cpu")
    flops = fwd.forward_flops(runner.model, (8, 32, 32))
    rep = fwd.forward_report(runner.run, flops, (8, 32, 32), rate, repeats=1)
    assert rep["seconds"] > 0 and rep["fraction_of_matmul"] == pytest.approx(rep["flop_rate"] / rate)


def test_interleaved_forward_report_pairs_each_pass_with_a_matmul_measurement(monkeypatch) -> None:
    rates = iter([100.0, 200.0, 100.0, 400.0])  # matmul rates measured before each pass, in call order
    monkeypatch.setattr(fwd, "matmul_flop_rate", lambda **_: next(rates))
    calls: list[str] = []
    paths = {"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")}
    rep = fwd.interleaved_forward_report(paths, flops=1000, shape_zyx=(2, 4, 4), repeats=2)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # one warm-up each, then round-robin
    for name, (r1, r2) in {"a": (100.0, 100.0), "b": (200.0, 400.0)}.items():
        got = rep[name]
        assert got["repeats"] == 2 and 0 < got["seconds"] <= got["seconds_median"]
        assert got["matmul_flop_rate"] == pytest.approx((r1 + r2) / 2)
        assert got["flop_rate"] == pytest.approx(1000 / got["seconds"])
        assert math.isfinite(got["fraction_of_matmul"]) and got["fraction_of_matmul"] > 0


def test_dice() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    assert pipeline.dice(a, b) == 1.0
    a[0, :2] = 1
    b[0, 1:3] = 1
    assert pipeline.dice(a, b) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    synthetic = pytest.importorskip("model_training.synthetic.case")
    writer = pytest.importorskip("model_training.synthetic.dicom_writer")
    case = synthetic.generate_case(0, 0, n_slices=20, haematoma_volume_ml=20.0)
    out = tmp_path_factory.mktemp("series")
    writer.write_dicom_series(case, out)
    return out


def test_optimised_and_baseline_paths_agree(small_series) -> None:
    """The runner's acceptance check on a real (synthetic) DICOM series: probability within 1e-3, Dice >= 0.999,
    between the service's path (project reader, fast preprocessing, compiled runner) and the plain baseline
    (SimpleITK reader, sitk.Resample, eager model)."""
    plans = Plans(matrix_zyx=(8, 64, 64))
    base_model = _model()
    runner = InferenceRunner(_model(), "cpu", compile="auto")  # the service's default: inductor when possible
    base = pipeline.run_baseline(small_series, base_model, plans)
    opt, extra = pipeline.run_optimised(small_series, runner, plans, encode=False)
    for res in (base, opt):
        assert set(res.stages_s) == {"read_decode_assemble", "preprocess", "forward", "inverse_mapping"}
        assert all(v > 0 for v in res.stages_s.values())
    assert extra["skull_strip_s"] > 0
    agree = pipeline.agreement(opt, base)
    assert agree["mask_voxels_baseline"] > 0  # the Dice below is not vacuous
    assert agree["max_abs_probability_map_diff"] < 1e-3
    assert agree["abs_expansion_probability_diff"] < 1e-3
    assert agree["mask_dice"] >= 0.999
    assert base.mask_reference.shape[0] == 20
