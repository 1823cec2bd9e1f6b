"""Checkpoints of a training run (``<run>/checkpoints/epoch_XXX.pt``, written atomically, the newest
:data:`KEEP_CHECKPOINTS` kept) and starting weights of a fine-tuning run (:func:`load_init_weights`).

A checkpoint holds the model, optimizer, scheduler and scaler states, the 0-based epoch it closes, the python /
numpy / torch (and CUDA) RNG states at the end of that epoch, the metrics history and the training seconds so
far. Restoring all of it makes a resumed run continue exactly as the uninterrupted one (on CPU). Every value is a
tensor or a plain Python container, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.model.unet import DualOutputUNet3D

log = logging.getLogger("model_training.training.trainer")
KEEP_CHECKPOINTS = 2


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``epoch_*.pt`` of ``run_dir``, or None."""
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("epoch_*.pt"))
    return ckpts[-1] if ckpts else None


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch and CUDA RNG states (numpy's key as an int64 tensor: weights-only loadable)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``epoch_<epoch + 1>.pt`` (via a temporary file) and delete all but the newest
    :data:`KEEP_CHECKPOINTS`."""
    ckpt_dir.mkdir(exist_ok=True)
    path = ckpt_dir / f"epoch_{epoch + 1:03d}.pt"
    tmp = ckpt_dir / f"epoch_{epoch + 1:03d}.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(path)
    for old in sorted(ckpt_dir.glob("epoch_*.pt"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def load_checkpoint(path: Path, device: str) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, its tensors on ``device``."""
    return torch.load(path, map_location=device, weights_only=True)


def load_init_weights(model: DualOutputUNet3D, path: Path) -> list[str]:
    """Start from ``path`` (safetensors): every tensor whose name and shape match is copied; the names of the
    model's tensors left at their initialisation (a changed classification head) are returned and logged."""
    from safetensors.torch import load_file

    source = load_file(str(path))
    own = model.state_dict()
    taken = {k: v for k, v in source.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not taken:
        raise ValueError(f"{path}: no tensor matches the architecture of the preset")
    model.load_state_dict(taken, strict=False)
    fresh = sorted(set(own) - set(taken))
    if fresh:
        log.info("initialised from %s; new (not loaded): %s", path, ", ".join(fresh))
    return fresh
