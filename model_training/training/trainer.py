"""The training loop: seeded, AMP on CUDA, checkpoint every epoch with exact resume, DDP under torchrun.

Run directory layout (written by rank 0):
  config.json        preset (with the schedule actually used), plans, model config, manifest fingerprint, seed,
                     case counts, torch version, hardware, training seconds, git commit
  metrics.csv        one row per epoch: lr, train loss parts, validation Dice and AUC (when a validation split
                     exists), seconds
  checkpoints/       epoch_XXX.pt (model, optimizer, scheduler, scaler, epoch, RNG states, metrics history);
                     the two most recent are kept. Loaded with ``torch.load(weights_only=True)``.
  model.safetensors  final weights (state dict of DualOutputUNet3D)
  train_ids.txt, val_ids.txt, test_ids.txt

Determinism: python, numpy and torch are seeded; the data order of epoch ``e`` comes from a sampler seeded by
(seed, e) and each augmentation from a generator seeded by (seed, e, case, copy) (model_training.augmentation),
so resuming from the checkpoint of epoch ``e`` reproduces the uninterrupted run exactly on CPU. On CUDA cuDNN
autotuning is on unless ``deterministic`` is set.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from app.model.device import training_autocast
from app.model.unet import DualOutputUNet3D, count_parameters
from app.preprocessing.plans import Plans
from model_training.augmentation import AugmentationPlan, augment_batch
from model_training.cohort.cache import build_cache, cache_path, default_cache_dir
from model_training.cohort.manifest import CaseRecord
from model_training.training.checkpoints import (
    KEEP_CHECKPOINTS,
    latest_checkpoint,
    load_checkpoint,
    load_init_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from model_training.training.data import CachedCaseDataset, aux_targets, class_pos_weight
from model_training.training.distributed import DistEnv, all_reduce_mean, barrier, cleanup, init_distributed
from model_training.training.losses import dual_loss
from model_training.training.prediction import auc_or_none, predict_cached
from model_training.training.presets import Preset, Schedule
from model_training.training.run_files import (
    METRIC_FIELDS,
    git_commit,
    hardware_description,
    run_config,
    write_metrics,
)

__all__ = ["KEEP_CHECKPOINTS", "METRIC_FIELDS", "CachedCaseDataset", "FitResult", "TrainOptions", "aux_targets",
           "class_pos_weight", "fit", "git_commit", "hardware_description", "latest_checkpoint", "load_init_weights",
           "predict_cached", "seed_everything"]

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    cache_dir: Path = field(default_factory=default_cache_dir)  # the user's cache directory
    loader_workers: int = 0
    preprocess_workers: int | None = None
    resume: bool = False
    stop_after_epoch: int | None = None  # stop (with a checkpoint) after this many epochs: splits long runs
    progress: bool = True
    deterministic: bool = False
    threads: int | None = None  # torch intra-op threads on CPU
    init_weights: Path | None = None  # safetensors to start from (fine-tuning); architecture must match the preset


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict[str, Any]]
    completed: bool
    seconds: float
    parameters: int
    extra: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int, deterministic_cpu: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic_cpu:
        torch.use_deterministic_algorithms(True, warn_only=True)


def fit(
    train_cases: Sequence[CaseRecord],
    preset: Preset,
    out_dir: Path,
    options: TrainOptions | None = None,
    *,
    val_cases: Sequence[CaseRecord] = (),
    test_cases: Sequence[CaseRecord] = (),
    manifest_info: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``preset`` on ``train_cases`` into ``out_dir`` (see the module docstring for what is written).

    ``val_cases`` are evaluated after every epoch (Dice, AUC); ``test_cases`` are only recorded by id.
    ``manifest_info`` (path, sha256, fingerprint) goes into config.json. Joins a torchrun process group when
    launched by torchrun.
    """
    options = options or TrainOptions()
    env = init_distributed(options.device)
    try:
        return _fit(env, list(train_cases), preset, Path(out_dir), options, list(val_cases), list(test_cases),
                    manifest_info or {})
    finally:
        cleanup(env)


@dataclass
class _Run:
    """The fixed inputs of one :func:`fit` call (rank, preset, cases, options, run directory)."""

    env: DistEnv
    preset: Preset
    plans: Plans
    options: TrainOptions
    run_dir: Path
    train_cases: list[CaseRecord]
    val_cases: list[CaseRecord]
    test_cases: list[CaseRecord]
    config: dict[str, Any]
    resume_from: Path | None

    @property
    def device(self) -> str:
        return self.env.device

    @property
    def sched(self) -> Schedule:
        return self.preset.schedule


@dataclass
class _State:
    """What training changes: the data pipeline, model, optimiser and the progress of the run."""

    dataset: CachedCaseDataset
    sampler: DistributedSampler
    loader: DataLoader
    pos_weight: float | None
    model: DualOutputUNet3D
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    n_params: int
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0


def _fit(
    env: DistEnv,
    train_cases: list[CaseRecord],
    preset: Preset,
    run_dir: Path,
    options: TrainOptions,
    val_cases: list[CaseRecord],
    test_cases: list[CaseRecord],
    manifest_info: dict[str, Any],
) -> FitResult:
    # the order of the steps fixes the order in which the RNGs are drawn: keep it (exact resume)
    run = _start(env, train_cases, preset, run_dir, options, val_cases, test_cases, manifest_info)
    _prepare_run_dir(run)
    state = _build_model_and_optimiser(run, *_build_data(run))
    if run.resume_from is not None:
        _resume(run, state)
    stop = run.sched.epochs if options.stop_after_epoch is None else min(run.sched.epochs, options.stop_after_epoch)
    for epoch in range(state.start_epoch, stop):
        t0 = time.perf_counter()
        row = _train_one_epoch(run, state, epoch)
        row["val_dice"], row["val_auc"] = _validate(run, state.model)
        state.elapsed += time.perf_counter() - t0
        row["seconds"] = round(time.perf_counter() - t0, 3)
        state.history.append(row)
        if env.is_main:
            _checkpoint(run, state, epoch, row)
        barrier(env)
    return _finish(run, state)


def _start(
    env: DistEnv, train_cases: list[CaseRecord], preset: Preset, run_dir: Path, options: TrainOptions,
    val_cases: list[CaseRecord], test_cases: list[CaseRecord], manifest_info: dict[str, Any],
) -> _Run:
    """Threads, seeds and cuDNN settings of this process; the run's config and the checkpoint to resume from."""
    plans = preset.plans()
    device = env.device
    if options.threads and not device.startswith("cuda"):
        torch.set_num_threads(options.threads)
    seed_everything(options.seed + env.rank, deterministic_cpu=not device.startswith("cuda"))
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = not options.deterministic
        torch.backends.cudnn.deterministic = options.deterministic
    if not train_cases:
        raise ValueError("no training cases")
    config = run_config(preset, plans, options.seed, options.init_weights, manifest_info,
                        {"train": len(train_cases), "val": len(val_cases), "test": len(test_cases)})
    resume_from = latest_checkpoint(run_dir) if options.resume else None
    return _Run(env, preset, plans, options, run_dir, train_cases, val_cases, test_cases, config, resume_from)


def _prepare_run_dir(run: _Run) -> None:
    """Rank 0: check a resumed run's config (or refuse to overwrite checkpoints), write config.json and the split
    ids, and preprocess the cases into the cache (a process pool; later epochs read the cache)."""
    if run.env.is_main:
        options, run_dir = run.options, run.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = run_dir / "config.json"
        if options.resume and cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            for key in ("preset", "plans", "model_config", "manifest", "seed", "n_cases"):
                if old.get(key) != run.config[key]:
                    raise ValueError(f"--resume: {key} differs from the run in {run_dir} ({cfg_path.name})")
        elif not options.resume and latest_checkpoint(run_dir) is not None:
            raise FileExistsError(f"{run_dir} already holds checkpoints; pass --resume or use a new directory")
        cfg_path.write_text(json.dumps(run.config, indent=2))
        for name, cases in (("train", run.train_cases), ("val", run.val_cases), ("test", run.test_cases)):
            (run_dir / f"{name}_ids.txt").write_text("".join(f"{c.case_id}\n" for c in cases))
        build_cache(run.train_cases + run.val_cases, run.plans, options.cache_dir, options.preprocess_workers,
                    options.progress)
    barrier(run.env)


def _build_data(run: _Run) -> tuple[CachedCaseDataset, DistributedSampler, DataLoader, float | None]:
    """The augmented training dataset (with auxiliary targets), its per-rank sampler and loader, and the
    positive-class weight of the classification loss."""
    sched, options, cases = run.sched, run.options, run.train_cases
    paths = [cache_path(options.cache_dir, c, run.plans) for c in cases]
    aug = AugmentationPlan(aug_copies=sched.aug_copies, include_original=sched.include_original, seed=options.seed)
    aux = [aux_targets(c, run.preset.model.aux_outputs) for c in cases]
    dataset = CachedCaseDataset(paths, [c.label for c in cases], run.plans, aug, aux,
                                dark_weight=sched.dark_weight, ivh_weight=sched.ivh_weight,
                                part_weights=sched.part_weights)
    pos_weight = class_pos_weight(sched.cls_pos_weight, [c.label for c in cases])
    sampler = DistributedSampler(dataset, num_replicas=run.env.world_size, rank=run.env.rank, shuffle=True,
                                 seed=options.seed, drop_last=False)
    loader = DataLoader(dataset, batch_size=sched.batch_size, sampler=sampler, num_workers=options.loader_workers,
                        pin_memory=run.device.startswith("cuda"), drop_last=False)
    return dataset, sampler, loader, pos_weight


def _build_model_and_optimiser(
    run: _Run, dataset: CachedCaseDataset, sampler: DistributedSampler, loader: DataLoader, pos_weight: float | None
) -> _State:
    """The model (from ``init_weights`` unless resuming), DDP wrapper, Adam, the step schedule and the scaler."""
    sched, device = run.sched, run.device
    model = DualOutputUNet3D(run.preset.model)
    if run.options.init_weights is not None and run.resume_from is None:
        load_init_weights(model, run.options.init_weights)
    model = model.to(device)
    if sched.channels_last_3d:
        model = model.to(memory_format=torch.channels_last_3d)
    n_params = count_parameters(model)
    net: torch.nn.Module = model
    if run.env.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[run.env.local_rank] if device.startswith("cuda") else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=sched.lr, weight_decay=sched.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(sched.milestones), gamma=sched.gamma)
    _, amp_dtype = training_autocast(device, sched.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return _State(dataset, sampler, loader, pos_weight, model, net, optimizer, scheduler, scaler, amp_dtype,
                  n_params)


def _resume(run: _Run, state: _State) -> None:
    """Load the newest checkpoint: weights, optimiser, schedule, scaler, RNG states, history and elapsed time."""
    assert run.resume_from is not None
    ckpt = load_checkpoint(run.resume_from, run.device)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state.start_epoch, state.history = int(ckpt["epoch"]) + 1, list(ckpt["history"])
    state.elapsed = float(ckpt["elapsed_s"])
    if run.env.is_main:
        log.info("resumed from %s at epoch %d", run.resume_from.name, state.start_epoch)


def _train_one_epoch(run: _Run, state: _State, epoch: int) -> dict[str, Any]:
    """One pass over the sampler's share of the augmented training set; the metrics row (losses averaged over
    the ranks; validation columns empty)."""
    from tqdm import tqdm

    sched, device = run.sched, run.device
    state.sampler.set_epoch(epoch)
    state.dataset.set_epoch(epoch)
    state.net.train()
    lr = state.optimizer.param_groups[0]["lr"]
    sums = np.zeros(3)
    steps = 0
    bar = tqdm(state.loader, desc=f"epoch {epoch + 1}/{sched.epochs}", unit="step", dynamic_ncols=True,
               disable=not (run.options.progress and run.env.is_main))
    for batch in bar:
        x = batch["image"].to(device, non_blocking=True)
        m = batch["mask"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        w = batch["weight"].to(device, non_blocking=True) if sched.weighs_structures else None
        x, m, w = augment_batch(x, m, batch["theta"], batch["augmented"], w)
        if sched.channels_last_3d:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        ctx, _ = training_autocast(device, sched.amp)
        with ctx:
            seg, cls, aux_logits = state.net(x, with_aux=True)
        parts = dual_loss(seg, cls, m, y, sched.seg_weight, sched.cls_weight, pos_weight=state.pos_weight,
                          aux_logits=aux_logits, aux_target=batch["aux"].to(device), aux_weight=sched.aux_weight,
                          voxel_weight=w)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(parts.total).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        sums += [parts.total.item(), parts.dice.item(), parts.bce.item()]
        steps += 1
        bar.set_postfix(loss=f"{sums[0] / steps:.4f}", lr=f"{lr:.2e}")
    state.scheduler.step()
    means = [all_reduce_mean(float(v) / max(steps, 1), run.env) for v in sums]
    return {"epoch": epoch + 1, "lr": lr, "train_loss": means[0], "train_dice_loss": means[1],
            "train_bce": means[2], "val_dice": None, "val_auc": None}


def _validate(run: _Run, model: DualOutputUNet3D) -> tuple[float | None, float | None]:
    """Rank 0 with a validation split: mean mask Dice (model grid) and AUC of the expansion probability."""
    if not (run.env.is_main and run.val_cases):
        return None, None
    cases, plans = run.val_cases, run.plans
    preds = predict_cached(model, [cache_path(run.options.cache_dir, c, plans) for c in cases],
                           [c.case_id for c in cases], [c.label for c in cases], plans.mask_threshold, run.device,
                           run.sched.amp)
    return (float(np.mean([p["dice"] for p in preds])),
            auc_or_none([p["label"] for p in preds], [p["probability"] for p in preds]))


def _checkpoint(run: _Run, state: _State, epoch: int, row: dict[str, Any]) -> None:
    """Rank 0, end of an epoch: the checkpoint (with the RNG states drawn so far) and metrics.csv."""
    save_checkpoint(run.run_dir / "checkpoints", epoch, {
        "epoch": epoch, "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else {},
        "rng": rng_state(), "history": state.history, "elapsed_s": state.elapsed,
    })
    write_metrics(run.run_dir, state.history)
    log.info("epoch %d: %s", epoch + 1, {k: v for k, v in row.items() if v is not None})


def _finish(run: _Run, state: _State) -> FitResult:
    """After the last epoch, rank 0 writes model.safetensors and completes config.json."""
    completed = len(state.history) >= run.sched.epochs
    if run.env.is_main and completed:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.model.state_dict().items()},
                  str(run.run_dir / "model.safetensors"))
        run.config.update({
            "parameters": state.n_params, "training_seconds": round(state.elapsed, 1),
            "hardware": hardware_description(run.device), "world_size": run.env.world_size,
            "amp_dtype": str(state.amp_dtype) if state.amp_dtype else None,
            "torch_version": torch.__version__, "git_commit": git_commit(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        (run.run_dir / "config.json").write_text(json.dumps(run.config, indent=2))
    barrier(run.env)
    return FitResult(run_dir=run.run_dir, history=state.history, completed=completed, seconds=state.elapsed,
                     parameters=state.n_params)
