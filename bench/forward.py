"""Forward-pass cost: FLOPs (torch.utils.flop_counter), measured time, and the machine's dense fp32 matmul rate.

The ratio ``forward FLOP rate / matmul FLOP rate`` is the figure to compare across (shared, noisy) machines.
On a shared VM both rates drift by 15-20 % within minutes (measured here: 2048² matmul 70 -> 84 GFLOP/s and
back), so :func:`interleaved_forward_report` measures them in pairs, the matmul rate right before each forward
pass, and reports the median of the paired ratios beside the best times.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(model: nn.Module, shape_zyx: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass (batch 1, one channel) as counted by ``FlopCounterMode`` (2 per multiply-add;
    convolutions and matmuls only, normalisations and activations are not counted)."""
    device = next(model.parameters()).device
    x = torch.zeros((1, 1, *shape_zyx), device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


def best_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None
                 ) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones (seconds)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_flop_rate(n: int = 2048, repeats: int = 5, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> float:
    """Measured dense ``n x n`` matmul throughput in FLOP/s (2 n^3 per product), best of ``repeats``."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen, dtype=torch.float32).to(device, dtype)
    b = torch.randn(n, n, generator=gen, dtype=torch.float32).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    seconds = best_seconds(lambda: torch.mm(a, b, out=out), repeats, warmup=2, sync=sync)
    return 2.0 * n**3 / seconds


def forward_report(run: Callable[[np.ndarray], object], flops: int, shape_zyx: tuple[int, int, int],
                   matmul_rate: float, repeats: int, sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Time ``run`` (a runner taking a (D,H,W) float32 array) and express it against ``matmul_rate``."""
    x = np.random.default_rng(0).normal(size=shape_zyx).clip(0, None).astype(np.float32)
    seconds = best_seconds(lambda: run(x), repeats, warmup=1, sync=sync)
    rate = flops / seconds
    return {"seconds": seconds, "flop_rate": rate, "fraction_of_matmul": rate / matmul_rate}


def interleaved_forward_report(paths: dict[str, Callable[[np.ndarray], object]], flops: int,
                               shape_zyx: tuple[int, int, int], repeats: int, device: torch.device | str = "cpu",
                               sync: Callable[[], None] | None = None,
                               setup: dict[str, Callable[[], object]] | None = None) -> dict[str, dict[str, float]]:
    """Time every path in ``paths`` (runners taking a (D,H,W) float32 array) ``repeats`` times, round-robin, each
    pass preceded by a matmul-rate measurement (best of 3). Each path gets ``seconds`` (best), ``seconds_median``,
    ``flop_rate`` (at the best time), ``matmul_flop_rate`` (median of its paired measurements) and
    ``fraction_of_matmul``: the median over repeats of (forward FLOP rate / the matmul rate measured just before).
    One untimed warm-up pass per path comes first. ``setup[name]``, when given, runs (untimed) before each of
    that path's passes, e.g. to switch the process's allocator policy between paths."""
    x = np.random.default_rng(0).normal(size=shape_zyx).clip(0, None).astype(np.float32)
    setup = setup or {}
    for name, run in paths.items():
        setup.get(name, lambda: None)()
        run(x)
    if sync:
        sync()
    times: dict[str, list[float]] = {name: [] for name in paths}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(max(1, repeats)):
        for name, run in paths.items():
            setup.get(name, lambda: None)()
            rates[name].append(matmul_flop_rate(repeats=3, device=device))
            times[name].append(best_seconds(lambda run=run: run(x), repeats=1, warmup=0, sync=sync))
    out: dict[str, dict[str, float]] = {}
    for name in paths:
        t, r = np.asarray(times[name]), np.asarray(rates[name])
        out[name] = {"seconds": float(t.min()), "seconds_median": float(np.median(t)),
                     "flop_rate": flops / float(t.min()), "matmul_flop_rate": float(np.median(r)),
                     "fraction_of_matmul": float(np.median(flops / t / r)), "repeats": int(t.size)}
    return out
