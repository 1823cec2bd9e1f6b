"""InferenceRunner (app/model/runtime.py): the optimised path must equal the eager float32 NCDHW model.

Budget: < 10 s on 2 CPU cores (a narrow network on an 8x32x32 input; no timing assertions).
Agreement criteria (the runner's acceptance criteria): probability within 1e-3 and mask Dice >= 0.999; the
float32 CPU path is in fact checked at 1e-4.
"""

from __future__ import annotations

import platform
import threading

import numpy as np
import pytest
import torch

from app.model.config import ModelConfig
from app.model.runtime import (
    InferenceRunner,
    configure_cpu_threads,
    cpu_memory_retained,
    cxx_compiler_available,
    resolve_autocast,
    resolve_compile,
    set_cpu_memory_retention,
)
from app.model.unet import DualOutputUNet3D

SHAPE = (8, 32, 32)
# a narrow network keeps the test fast; the runner does not depend on the widths
SMALL = ModelConfig(encoder_widths=(4, 8, 16), bridge_width=16, decoder_widths=(8, 4), cls_width=8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(a, b).sum()) / float(denom)


def _model(seed: int = 0) -> DualOutputUNet3D:
    torch.manual_seed(seed)
    model = DualOutputUNet3D(SMALL).eval()
    with torch.no_grad():  # shift the mask logits so that roughly a third of the voxels are foreground
        model.seg_head.bias.fill_(-0.3)
    return model


def _input(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    return np.clip(x, 0.0, None)  # the preprocessing output is >= 0


def _eager(model: DualOutputUNet3D, x: np.ndarray) -> tuple[np.ndarray, float]:
    with torch.no_grad():
        seg, cls = model.predict(torch.from_numpy(x)[None, None])
    return seg[0, 0].numpy(), float(cls[0])


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray, float]:
    x = _input()
    prob, cls = _eager(_model(), x)
    return x, prob, cls


@pytest.mark.parametrize("channels_last", [True, False])
def test_runner_matches_eager_fp32(reference, channels_last: bool) -> None:
    x, ref_prob, ref_cls = reference
    runner = InferenceRunner(_model(), "cpu", channels_last=channels_last)
    x_before = x.copy()
    prob, cls = runner.run(x)
    np.testing.assert_array_equal(x, x_before)  # input untouched
    assert prob.dtype == np.float32 and prob.shape == SHAPE
    assert isinstance(cls, float) and 0.0 <= cls <= 1.0
    assert np.abs(prob - ref_prob).max() < 1e-4
    assert abs(cls - ref_cls) < 1e-4
    ref_mask, mask = ref_prob >= 0.5, prob >= 0.5
    assert 0.05 < ref_mask.mean() < 0.95  # the Dice check below is not vacuous
    assert _dice(mask, ref_mask) >= 0.999


@pytest.mark.skipif(not cxx_compiler_available(), reason="inductor needs a C++ compiler")
def test_compiled_runner_matches_eager_fp32(reference) -> None:
    """torch.compile with freezing (the CPU default of the service): same numbers as eager, within 1e-4."""
    x, ref_prob, ref_cls = reference
    runner = InferenceRunner(_model(), "cpu", compile=True)
    prob, cls = runner.run(x)
    assert runner.describe()["compile"] is True and runner.compile_error is None
    assert np.abs(prob - ref_prob).max() < 1e-4 and abs(cls - ref_cls) < 1e-4
    assert _dice(prob >= 0.5, ref_prob >= 0.5) >= 0.999
    other = _input(seed=2)  # the compiled graph is reused with fresh data, not a stale result
    prob2, _ = runner.run(other)
    assert np.abs(prob2 - _eager(_model(), other)[0]).max() < 1e-4 and np.abs(prob2 - prob).max() > 1e-2


def test_failed_compilation_falls_back_to_eager(reference) -> None:
    x, ref_prob, _ = reference
    runner = InferenceRunner(_model(), "cpu", compile=True)
    calls = []

    def broken_compiled_module(_: torch.Tensor) -> None:
        calls.append(1)
        raise RuntimeError("C++ compile error: cannot find g++\nmore detail")

    runner._forward_module = broken_compiled_module  # what a failing inductor build looks like to the runner
    prob, _ = runner.run(x)
    assert np.abs(prob - ref_prob).max() < 1e-4
    info = runner.describe()
    assert info["compile"] is False and info["compile_error"] == "RuntimeError: C++ compile error: cannot find g++"
    runner.run(x)
    assert len(calls) == 1  # not retried on every request


def test_errors_on_an_already_compiled_shape_propagate(reference) -> None:
    x, _, _ = reference
    runner = InferenceRunner(_model(), "cpu", compile=True)
    runner._forward_module = runner.model  # stands in for a compiled module that has run this shape before
    runner.run(x)

    def failing(_: torch.Tensor) -> None:
        raise RuntimeError("a fault in the model, not in the compiler")

    runner._forward_module = failing
    with pytest.raises(RuntimeError, match="a fault in the model"):
        runner.run(x)
    assert runner.describe()["compile"] is True


def test_resolve_compile_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert resolve_compile(cpu, "on") is True and resolve_compile(cuda, True) is True
    assert resolve_compile(cpu, "off") is False and resolve_compile(cpu, False) is False
    assert resolve_compile(cuda, "auto") is False
    assert resolve_compile(cpu, "auto") is cxx_compiler_available()
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", "")
    assert resolve_compile(cpu, "auto") is False  # no compiler: eager, without a failed attempt
    with pytest.raises(ValueError):
        resolve_compile(cpu, "sometimes")  # type: ignore[arg-type]


def test_runner_is_deterministic_and_thread_safe(reference) -> None:
    x, ref_prob, _ = reference
    runner = InferenceRunner(_model(), "cpu")
    first, first_cls = runner(x)
    results: list[tuple[np.ndarray, float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(runner.run(x))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 3
    for prob, cls in results:
        np.testing.assert_allclose(prob, first, atol=1e-6)
        assert abs(cls - first_cls) < 1e-6
    assert np.abs(first - ref_prob).max() < 1e-4


def test_runner_converts_dtype_and_rejects_bad_shapes() -> None:
    runner = InferenceRunner(_model(), "cpu")
    x64 = _input().astype(np.float64)
    prob64, _ = runner.run(x64)
    prob32, _ = runner.run(x64.astype(np.float32))
    np.testing.assert_array_equal(prob64, prob32)
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        runner.run(np.zeros((1,) + SHAPE, dtype=np.float32))
    with pytest.raises(ValueError, match="real-valued"):
        runner.run(np.zeros(SHAPE, dtype=np.complex64))


def test_map_overlapped_preserves_order_and_runs_prepare_elsewhere(reference) -> None:
    x, ref_prob, _ = reference
    runner = InferenceRunner(_model(), "cpu")
    main = threading.get_ident()
    seen_threads: list[int] = []

    def prepare(scale: float) -> np.ndarray:
        seen_threads.append(threading.get_ident())
        return x * scale

    out = list(runner.map_overlapped([1.0, 0.0, 1.0], prepare))
    assert [item for item, _, _ in out] == [1.0, 0.0, 1.0]
    assert np.abs(out[0][1] - ref_prob).max() < 1e-4
    np.testing.assert_allclose(out[2][1], out[0][1], atol=1e-6)
    assert not np.allclose(out[1][1], out[0][1])  # the zero input gives a different map
    assert seen_threads and all(t != main for t in seen_threads)
    assert list(runner.map_overlapped([], prepare)) == []


def test_map_overlapped_propagates_prepare_errors() -> None:
    runner = InferenceRunner(_model(), "cpu")

    def prepare(i: int) -> np.ndarray:
        if i == 1:
            raise RuntimeError("brain not found")
        return np.zeros(SHAPE, dtype=np.float32)

    gen = runner.map_overlapped([0, 1, 2], prepare)
    assert next(gen)[0] == 0
    with pytest.raises(RuntimeError, match="brain not found"):
        next(gen)


def test_resolve_autocast_rules() -> None:
    cpu = torch.device("cpu")
    assert resolve_autocast(cpu, "auto") is None  # float32 on CPU by default
    assert resolve_autocast(cpu, "off") is None
    assert resolve_autocast(cpu, None) is None
    assert resolve_autocast(cpu, "bf16") is torch.bfloat16
    assert resolve_autocast(cpu, "fp16") is torch.float16
    assert resolve_autocast(cpu, torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError):
        resolve_autocast(cpu, torch.float32)
    with pytest.raises(ValueError):
        resolve_autocast(cpu, "int8")  # type: ignore[arg-type]
    if torch.cuda.is_available():
        assert resolve_autocast(torch.device("cuda"), "auto") in (torch.bfloat16, torch.float16)


def test_cpu_bf16_autocast_stays_close(reference) -> None:
    """bf16 is not the CPU default, but forcing it must still give a usable map (documents the tolerance)."""
    x, ref_prob, _ = reference
    runner = InferenceRunner(_model(), "cpu", autocast="bf16")
    assert runner.describe()["autocast"] == "bfloat16"
    prob, _ = runner.run(x)
    assert np.abs(prob - ref_prob).max() < 0.05
    assert _dice(prob >= 0.5, ref_prob >= 0.5) > 0.95


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_request_without_cuda_is_refused() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        InferenceRunner(_model(), "cuda:0")


def test_cuda_graphs_flag_is_ignored_on_cpu(reference) -> None:
    x, ref_prob, _ = reference
    runner = InferenceRunner(_model(), "cpu", cuda_graphs=True)
    assert runner.describe()["cuda_graphs"] is False
    prob, _ = runner.run(x)
    assert np.abs(prob - ref_prob).max() < 1e-4


def test_configure_cpu_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_cpu_threads(1) == 1
        assert configure_cpu_threads(None) == 1
        with pytest.raises(ValueError):
            configure_cpu_threads(0)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc policy")
def test_cpu_memory_retention_toggles_and_keeps_results(reference) -> None:
    x, ref_prob, _ = reference
    runner = InferenceRunner(_model(), "cpu")
    try:
        assert set_cpu_memory_retention(True) is True and cpu_memory_retained()
        assert runner.describe()["retain_cpu_memory"] is True
        big = torch.empty(64 * 1024**2 // 4)  # above glibc's mmap threshold: now served from the heap
        del big
        prob, _ = runner.run(x)
        assert np.abs(prob - ref_prob).max() < 1e-4
    finally:
        assert set_cpu_memory_retention(False) is True
    assert not cpu_memory_retained() and runner.describe()["retain_cpu_memory"] is False
