"""Device and precision selection, shared by the predictor, the inference runner, the trainer and torchrun.

Devices
    :func:`resolve_device` turns a request (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, any torch device
    name) into a ``torch.device``: ``"auto"`` is the process's CUDA device when CUDA is usable, else the CPU;
    under torchrun (``local_rank`` given) ``"cuda"`` is the local GPU ``cuda:<local_rank>``. Asking for CUDA
    where it is not usable is a ``ValueError``. :func:`device_name` is the same as a string, the form the
    training code passes around.

Precision
    :data:`PrecisionMode` (``"auto"``, ``"bf16"``, ``"fp16"``, ``"off"``) is the one precision setting of the
    service (``amp``), the runner (``autocast``) and the evaluation commands; :func:`resolve_autocast` maps it to
    an autocast dtype (``None``: plain float32) and :func:`autocast_context` enters it. Training has an on/off
    switch (``Schedule.amp``), resolved by :func:`training_autocast` with the same ``"auto"`` rule: bfloat16 on
    a CUDA device that supports it, float16 on older CUDA devices, float32 on CPU (without AVX-512-BF16/AMX,
    bf16 convolutions are emulated and slower there).

CPU threads
    :func:`configure_cpu_threads` sets torch's intra-op thread count.

torch is imported on first use, so command-line parsers can take :data:`PRECISION_MODES` for their choices
without loading it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import torch

PrecisionMode = Literal["auto", "bf16", "fp16", "off"]
PRECISION_MODES: tuple[str, ...] = get_args(PrecisionMode)


def require_usable(device: torch.device, requested: object = None) -> torch.device:
    """``device`` itself; a CUDA device while CUDA is not usable is a ``ValueError`` naming ``requested``
    (default: the device)."""
    import torch

    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device if requested is None else requested} requested but CUDA is not available")
    return device


def resolve_device(requested: str | torch.device | None = "auto", *, local_rank: int | None = None) -> torch.device:
    """The torch device for ``requested``.

    ``"auto"``/None: ``cuda:<local_rank>`` (``cuda:0`` outside torchrun) when CUDA is usable, else ``cpu``.
    ``"cuda"``: ``cuda:<local_rank>`` under torchrun (``local_rank`` given), else torch's current CUDA device
    (``cuda``). Anything else: that torch device. Raises ``ValueError`` when CUDA is requested but not usable.
    """
    import torch

    if isinstance(requested, torch.device):
        return require_usable(requested)
    if requested is None or requested == "auto":
        return torch.device(f"cuda:{local_rank or 0}" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and local_rank is not None:
        return require_usable(torch.device(f"cuda:{local_rank}"), repr(requested))
    return require_usable(torch.device(requested), repr(requested))


def device_name(requested: str | None = "auto", local_rank: int = 0) -> str:
    """:func:`resolve_device` as a string (``"cpu"``, ``"cuda:0"``, ...), ``"cuda"`` meaning the local GPU."""
    return str(resolve_device(requested, local_rank=local_rank))


def resolve_autocast(device: torch.device, mode: PrecisionMode | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype for ``device``: ``None`` means plain float32.

    ``"auto"``: bfloat16 on a CUDA device that supports it, float16 on older CUDA devices, float32 on CPU.
    ``"bf16"``/``"fp16"`` force that dtype (bf16 on CPU is allowed but emulated and slow without AVX-512-BF16).
    """
    import torch

    if mode is None or mode == "off":
        return None
    if isinstance(mode, torch.dtype):
        if mode not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be bfloat16 or float16, not {mode}")
        return mode
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if mode != "auto":
        raise ValueError(f"unknown autocast mode {mode!r}")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device`` with ``dtype``; nothing (float32) when ``dtype`` is None."""
    if dtype is None:
        yield
    else:
        import torch

        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def training_autocast(device: str | torch.device, enabled: bool) -> tuple[Any, torch.dtype | None]:
    """The trainer's mixed precision: ``(context manager, dtype)``; when ``enabled``, the ``"auto"`` rule of
    :func:`resolve_autocast` (bf16/fp16 on CUDA, float32 on CPU), else float32 (``(nullcontext, None)``)."""
    import torch

    dev = torch.device(device)
    dtype = resolve_autocast(dev, "auto" if enabled else "off")
    if dtype is None:
        return contextlib.nullcontext(), None
    return torch.autocast(dev.type, dtype=dtype), dtype


def configure_cpu_threads(num_threads: int | None) -> int:
    """Set torch's intra-op thread count (``None`` keeps the current one) and return the count in effect.

    PyTorch defaults to the number of physical cores, which measured best here; more threads than cores only
    adds contention. Inter-op parallelism is not used by this model (a single chain of convolutions).
    """
    import torch

    if num_threads is not None:
        if num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()
