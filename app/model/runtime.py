"""The optimised inference runner: one model, one device, fixed-shape forward passes as fast as the device allows.

:class:`InferenceRunner` takes the preprocessed model input (float32 numpy, shape (D, H, W), z-y-x on the model
grid, brain z-scored) and returns ``(probability_map, expansion_probability)``: the haematoma probability on the
same (D, H, W) grid as float32 numpy, and the expansion probability as a Python float. The sigmoids are computed
on the device in float32, whatever the compute precision.

What it does differently from the plain ``model.predict(torch.from_numpy(x)[None, None])``:

* **channels-last 3D** (``torch.channels_last_3d``, NDHWC) weights and input, on CUDA by default (cuDNN's
  tensor-core convolutions want it). On the project's CPU reference machine eager channels-last was *slower*
  than NCDHW (bench/README.md), so on CPU the layout is left to inductor (below), which picks oneDNN's blocked one.
* **autocast** on CUDA (:mod:`app.model.device`): bfloat16 (or float16 where bf16 is unsupported) with the
  normalisations and sigmoids in float32. On CPU the default is float32: without AVX-512-BF16/AMX, bf16
  convolutions are emulated and slower.
* **CUDA graphs** (``cuda_graphs=True``, CUDA only): the whole forward pass is captured once per input shape and
  replayed, which removes the per-kernel launch overhead (a few ms per pass for this ~40-layer network).
* **torch.compile** with inductor **freezing** (``compile=True``, or ``"auto"`` = on CPU when a C++ compiler is
  found, :mod:`app.model.compiler`): the weights become constants, oneDNN convolution weights are pre-packed
  once, the transposed convolutions go to oneDNN's deconvolution (eager PyTorch falls back to a slow path for
  them), and each normalisation + ReLU becomes one fused C++ loop (speed and agreement with eager:
  bench/README.md). The first pass per input shape compiles (tens of seconds), so the service does it during
  warm-up, before it reports ready. If compilation fails (no compiler, an unsupported platform) the runner logs it
  once and falls back to eager; :meth:`describe` says which.
* **retained CPU memory** (:func:`app.model.memory.set_cpu_memory_retention`, applied by ``python -m app serve``
  on CPU; ``ICH_RETAIN_CPU_MEMORY``): activations come from glibc's heap instead of fresh ``mmap``s, so a pass
  does not page-fault its buffers in again.
* **overlap**: on CUDA the device lock is held only while the work is *enqueued*. The host->device copy comes from
  pinned memory and the device->host copy goes into pinned memory with ``non_blocking=True``; the caller waits
  for its own result on a CUDA event after releasing the lock. So while request N's kernels run, request N+1's
  CPU preprocessing (on another thread), pinning and enqueueing proceed, and the GPU never waits for the CPU
  unless there is no work at all. :meth:`InferenceRunner.map_overlapped` does the same for a batch on one thread.

Numerical agreement with the eager float32 NCDHW model (tests/test_runtime.py): float32 paths (CPU default)
agree within 1e-4 on probabilities (observed ~1e-6); bf16 autocast on GPU is checked by bench/gpu_check.sh
against the same 1e-3 probability / Dice >= 0.999 mask criteria used for the CPU path, and is not the default
where that check fails (``autocast="off"`` restores float32).

Device and precision selection live in :mod:`app.model.device`, the compile decision in :mod:`app.model.compiler`
and the glibc memory policy in :mod:`app.model.memory`; their names are re-exported here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, TypeVar

import numpy as np
import torch
from torch import nn

from app.model.compiler import CompileMode, cxx_compiler_available, resolve_compile
from app.model.device import (
    PrecisionMode,
    autocast_context,
    configure_cpu_threads,
    require_usable,
    resolve_autocast,
)
from app.model.memory import cpu_memory_retained, set_cpu_memory_retention

__all__ = [
    "AutocastMode",
    "CompileMode",
    "InferenceRunner",
    "configure_cpu_threads",
    "cpu_memory_retained",
    "cxx_compiler_available",
    "resolve_autocast",
    "resolve_compile",
    "set_cpu_memory_retention",
]

log = logging.getLogger(__name__)

AutocastMode = PrecisionMode
T = TypeVar("T")
U = TypeVar("U")


class InferenceRunner:
    """Fixed-shape forward passes of a :class:`~app.model.unet.DualOutputUNet3D` (or any module returning
    ``(seg_logits (N,1,D,H,W), cls_logits (N,1))``) on one device.

    Thread-safe: any number of threads may call :meth:`run`; device work is serialised by an internal lock
    (one forward pass at a time per device) while CPU-side staging happens outside it.

    Args:
        model: the network; it is put in eval mode and moved to ``device`` (in place, as ``nn.Module.to`` does).
        device: ``torch.device`` or a string such as ``"cpu"`` / ``"cuda:0"``.
        channels_last: use ``torch.channels_last_3d`` for weights and input; ``"auto"`` (default) = on CUDA only
            (NCDHW is faster on the project's CPU reference machine, bench/README.md).
        autocast: see :func:`app.model.device.resolve_autocast` (default ``"auto"``: bf16 on CUDA, float32 on
            CPU).
        compile: wrap the model in ``torch.compile`` (inductor, freezing); see
            :func:`app.model.compiler.resolve_compile`. The first
            pass per input shape compiles; a failed compilation falls back to eager (logged, :meth:`describe`).
        cuda_graphs: capture and replay the forward pass as a CUDA graph (ignored on CPU).
        num_threads: CPU intra-op threads (``None``: leave torch's setting).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        *,
        channels_last: bool | Literal["auto"] = "auto",
        autocast: AutocastMode | torch.dtype | None = "auto",
        compile: CompileMode = False,
        cuda_graphs: bool = False,
        num_threads: int | None = None,
    ) -> None:
        self.device = require_usable(torch.device(device))
        self.channels_last = self.device.type == "cuda" if channels_last == "auto" else bool(channels_last)
        self.autocast_dtype = resolve_autocast(self.device, autocast)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.compiled = resolve_compile(self.device, compile)
        self.compile_error: str | None = None
        self._compiled_shapes: set[tuple[int, ...]] = set()
        if self.device.type == "cpu":
            configure_cpu_threads(num_threads)
        model = model.eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model
        self._forward_module: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = (
            torch.compile(model, dynamic=False) if self.compiled else model
        )
        self._lock = threading.Lock()
        self._graphs: dict[tuple[int, ...], _CapturedGraph] = {}

    # --- public API ---------------------------------------------------------------------------------------------
    def __call__(self, tensor: np.ndarray) -> tuple[np.ndarray, float]:
        return self.run(tensor)

    def run(self, tensor: np.ndarray) -> tuple[np.ndarray, float]:
        """One forward pass. ``tensor``: float32 (D, H, W) (other real dtypes are converted).

        Returns the haematoma probability map, float32 (D, H, W), and the expansion probability in [0, 1].
        """
        x_host = self._to_host_tensor(tensor)
        if self.device.type == "cuda":
            return self._run_cuda(x_host)
        with self._lock:
            prob, cls = self._device_forward(self._to_layout(x_host))
        return prob.numpy(), float(cls.item())

    def map_overlapped(self, items: Iterable[T], prepare: Callable[[T], np.ndarray]) -> Iterator[
            tuple[T, np.ndarray, float]]:
        """Run ``prepare`` (CPU preprocessing, returning the (D, H, W) float32 input) for item k+1 on a helper
        thread while item k's forward pass runs; yields ``(item, probability_map, expansion_probability)`` in
        order. Exceptions from ``prepare`` or the forward pass propagate at that item."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
            iterator = iter(items)
            pending: tuple[T, concurrent.futures.Future[np.ndarray]] | None = None
            first = next(iterator, _SENTINEL)
            if first is not _SENTINEL:
                pending = (first, pool.submit(prepare, first))  # type: ignore[arg-type]
            while pending is not None:
                item, future = pending
                tensor = future.result()
                nxt = next(iterator, _SENTINEL)
                pending = None if nxt is _SENTINEL else (nxt, pool.submit(prepare, nxt))  # type: ignore[arg-type]
                prob, cls = self.run(tensor)
                yield item, prob, cls

    def warm_up(self, shape_zyx: tuple[int, int, int], repeats: int = 2) -> None:
        """Run ``repeats`` passes on zeros of ``shape_zyx`` (allocator, oneDNN/cuDNN algorithm selection, graph
        capture, compilation), so that the first real request is not the slow one."""
        zeros = np.zeros(shape_zyx, dtype=np.float32)
        for _ in range(max(1, repeats)):
            self.run(zeros)

    def describe(self) -> dict[str, object]:
        """JSON-able settings, for logs and benchmark reports."""
        return {
            "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"),
            "channels_last_3d": self.channels_last,
            "autocast": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "off",
            "compile": self.compiled,
            "compile_error": self.compile_error,
            "cuda_graphs": self.cuda_graphs,
            "cpu_threads": torch.get_num_threads(),
            "retain_cpu_memory": cpu_memory_retained() if self.device.type == "cpu" else None,
        }

    # --- internals ----------------------------------------------------------------------------------------------
    @staticmethod
    def _to_host_tensor(tensor: np.ndarray) -> torch.Tensor:
        arr = np.asarray(tensor)
        if arr.ndim != 3:
            raise ValueError(f"expected a (D, H, W) volume, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"expected a real-valued volume, got dtype {arr.dtype}")
        # no copy when the caller already passes C-contiguous float32 (the preprocessing output)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        return torch.from_numpy(arr)[None, None]

    def _to_layout(self, x: torch.Tensor) -> torch.Tensor:
        # for C == 1, NCDHW and NDHWC hold the same bytes; this only changes strides (no copy)
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def _device_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward pass on a device tensor (N=1). Returns (prob (D,H,W) float32, cls prob () float32) on device."""
        with torch.inference_mode(), autocast_context(self.device, self.autocast_dtype):
            seg, cls = self._compiled_forward(x) if self.compiled else self.model(x)
        with torch.inference_mode():
            prob = torch.sigmoid(seg[0, 0].float()).contiguous()
            cls_p = torch.sigmoid(cls.float().reshape(-1)[0])
        return prob, cls_p

    def _compiled_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # freezing is read when a graph is compiled (first call per shape), so it is patched around every call
        import torch._inductor.config as inductor_config

        shape = tuple(x.shape)
        try:
            with inductor_config.patch(freezing=True):
                out = self._forward_module(x)
        except Exception as exc:
            # a failure while compiling (no compiler, unsupported platform): serve eagerly rather than not at all.
            # Errors on an already-compiled shape, and out-of-memory, are the model's and propagate.
            if shape in self._compiled_shapes or isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            self.compiled = False
            first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
            self.compile_error = f"{type(exc).__name__}: {first_line}"
            self._forward_module = self.model
            log.warning("torch.compile failed (%s); running the model eagerly", type(exc).__name__)
            return self.model(x)
        self._compiled_shapes.add(shape)
        return out

    def _run_cuda(self, x_host: torch.Tensor) -> tuple[np.ndarray, float]:
        # CPU-side staging outside the lock: pinning lets the H2D copy run asynchronously
        x_pinned = x_host.pin_memory()
        shape = tuple(x_host.shape)
        with self._lock:
            stream = torch.cuda.current_stream(self.device)
            if self.cuda_graphs:
                graph = self._graphs.get(shape)
                if graph is None:
                    graph = self._graphs[shape] = _CapturedGraph(self, shape)
                prob_dev, cls_dev = graph.replay(x_pinned)
            else:
                x_dev = self._to_layout(x_pinned.to(self.device, non_blocking=True))
                prob_dev, cls_dev = self._device_forward(x_dev)
            prob_host = torch.empty(prob_dev.shape, dtype=torch.float32, pin_memory=True)
            cls_host = torch.empty((), dtype=torch.float32, pin_memory=True)
            prob_host.copy_(prob_dev, non_blocking=True)
            cls_host.copy_(cls_dev, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        # wait for this request only; other threads can enqueue meanwhile. x_pinned stays referenced (and so
        # alive) until here, after the copy that reads it has run.
        done.synchronize()
        # copy out of pinned memory so callers do not hold page-locked buffers
        return prob_host.numpy().copy(), float(cls_host.item())


class _CapturedGraph:
    """A CUDA graph of the forward pass for one input shape, with static input/output buffers.

    Replays are serialised by the runner's lock; the D2H copies of a replay's outputs are enqueued on the same
    stream before the next replay, so a later replay cannot overwrite outputs that are still being read.
    """

    def __init__(self, runner: InferenceRunner, shape: tuple[int, ...]):
        device = runner.device
        fmt = torch.channels_last_3d if runner.channels_last else torch.contiguous_format
        self.static_x = torch.zeros(shape, device=device, dtype=torch.float32).contiguous(memory_format=fmt)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up passes (cuDNN autotuning, allocator) outside the capture
            for _ in range(3):
                runner._device_forward(self.static_x)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_prob, self.static_cls = runner._device_forward(self.static_x)
        log.info("captured a CUDA graph of the forward pass for input shape %s", shape)

    def replay(self, x_pinned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # copy_ handles the NCDHW (host) -> channels-last (device) strides; for C == 1 the bytes are identical
        self.static_x.copy_(x_pinned, non_blocking=True)
        self.graph.replay()
        return self.static_prob, self.static_cls


_SENTINEL = object()
