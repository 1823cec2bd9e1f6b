"""Multi-GPU training the ordinary PyTorch way: torchrun + DistributedDataParallel + DistributedSampler.

``torchrun --nproc_per_node=4 -m model_training train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` reads them, joins the process group (NCCL on CUDA, Gloo on CPU) and pins each process
to its local GPU (device selection: :func:`app.model.device.device_name`). Without those variables it returns a
single-process environment and nothing is initialised.
Rank 0 alone writes files (checkpoints, metrics, weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from app.model.device import device_name

#: the old name of :func:`app.model.device.device_name` (``"cuda"`` = the local GPU ``cuda:<local_rank>``)
resolve_device = device_name


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = "auto") -> DistEnv:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1, else return the single-process environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = device_name(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        if dev.startswith("cuda"):
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, env: DistEnv) -> float:
    """Mean of a scalar over all ranks (identity in a single process)."""
    if not (env.distributed and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / env.world_size


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
