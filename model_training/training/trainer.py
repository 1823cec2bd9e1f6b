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

import csv
import json
import logging
import platform
import random
import subprocess
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from app.model.unet import DualOutputUNet3D, count_parameters
from app.preprocessing.plans import Plans
from model_training.augmentation import AugmentationPlan, augment_batch
from model_training.cohort.cache import build_cache, cache_path
from model_training.cohort.manifest import CaseRecord
from model_training.training.distributed import DistEnv, all_reduce_mean, barrier, cleanup, init_distributed
from model_training.training.losses import dual_loss, hard_dice
from model_training.training.presets import Preset

log = logging.getLogger(__name__)
METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_dice_loss", "train_bce", "val_dice", "val_auc", "seconds")
KEEP_CHECKPOINTS = 2


@dataclass
class TrainOptions:
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    cache_dir: Path = Path(".cache/preprocessed")
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


def git_commit(repo_dir: Path | None = None) -> str | None:
    """The checked-out commit of the project (None outside a git checkout); "+dirty" when files changed."""
    cwd = repo_dir or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def hardware_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        return f"{torch.cuda.get_device_name(idx)} (CUDA {torch.version.cuda})"
    import os

    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def seed_everything(seed: int, deterministic_cpu: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic_cpu:
        torch.use_deterministic_algorithms(True, warn_only=True)


class CachedCaseDataset(Dataset):
    """Cached cases x ``aug_copies``; every item carries its augmentation ``theta`` (applied on the device).

    Items: ``image`` float32 (1, D, H, W), ``mask`` float32 (1, D, H, W), ``label`` float32 scalar (-1: no
    expansion label, a head without haematoma), ``aux`` float32 (n_aux,) auxiliary targets (-1 unknown),
    ``theta`` float32 (3, 4), ``augmented`` bool, ``index`` int (case index).
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int | None], plans: Plans,
                 aug: AugmentationPlan | None, aux: Sequence[Sequence[float]] | None = None):
        self.paths = [Path(p) for p in paths]
        self.labels = [-1 if v is None else int(v) for v in labels]
        self.aux = [list(a) for a in aux] if aux is not None else [[] for _ in self.paths]
        self.fov = tuple(float(f) for f in plans.fov_mm_zyx)
        self.aug = aug
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths) * (self.aug.aug_copies if self.aug else 1)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.paths)
        case, copy = (self.aug.decode(i, n) if self.aug else (i, 0))
        with np.load(self.paths[case]) as z:
            image = torch.from_numpy(np.ascontiguousarray(z["tensor"], dtype=np.float32))[None]
            mask = torch.from_numpy(np.ascontiguousarray(z["mask"], dtype=np.float32))[None]
        augmented = bool(self.aug and self.aug.is_augmented(copy))
        if augmented:
            theta = torch.from_numpy(self.aug.theta_for(self.epoch, case, copy, self.fov)).float()  # type: ignore[union-attr]
        else:
            theta = torch.eye(3, 4)
        return {
            "image": image,
            "mask": mask,
            "label": torch.tensor(float(self.labels[case])),
            "aux": torch.tensor(self.aux[case], dtype=torch.float32),
            "theta": theta,
            "augmented": torch.tensor(augmented),
            "index": case,
        }


def _autocast(device: str, enabled: bool) -> tuple[Any, torch.dtype | None]:
    if not (enabled and device.startswith("cuda")):
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


@torch.no_grad()
def predict_cached(
    model: DualOutputUNet3D,
    paths: Sequence[Path],
    case_ids: Sequence[str],
    labels: Sequence[int],
    threshold: float,
    device: str,
    amp: bool = False,
) -> list[dict[str, Any]]:
    """Predict cached cases: expansion probability and mask Dice (at ``threshold``) on the model grid."""
    model.eval()
    out = []
    for p, cid, y in zip(paths, case_ids, labels, strict=True):
        with np.load(p) as z:
            x = torch.from_numpy(np.ascontiguousarray(z["tensor"], dtype=np.float32))[None, None].to(device)
            mask = z["mask"].astype(bool)
        ctx, _ = _autocast(device, amp)
        with ctx:
            seg, cls = model(x)
        prob_map = torch.sigmoid(seg.float())[0, 0].cpu().numpy()
        prob = float(torch.sigmoid(cls.float()).reshape(-1)[0].cpu())
        out.append({
            "case_id": cid,
            "label": None if y is None else int(y),
            "probability": prob,
            "dice": hard_dice(prob_map >= threshold, mask),
            "predicted_voxels": int((prob_map >= threshold).sum()),
            "true_voxels": int(mask.sum()),
        })
    return out


def _auc_or_none(labels: Sequence[int | None], scores: Sequence[float]) -> float | None:
    pairs = [(y, s) for y, s in zip(labels, scores, strict=True) if y is not None]
    labels, scores = [y for y, _ in pairs], [s for _, s in pairs]
    if len(set(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def aux_targets(case: CaseRecord, n_aux: int) -> list[float]:
    """Auxiliary targets of a case: the NCCT markers and intraventricular extension (MARKER_FLAGS order) of a
    case with a haematoma, -1 where unknown (a head without haematoma, or a marker the manifest leaves empty)."""
    from model_training.ncct_markers import MARKER_FLAGS

    if n_aux == 0:
        return []
    if n_aux != len(MARKER_FLAGS):
        raise ValueError(f"aux_outputs must be 0 or {len(MARKER_FLAGS)} (the markers {', '.join(MARKER_FLAGS)})")
    if not case.has_haematoma:
        return [-1.0] * n_aux
    return [-1.0 if case.markers.get(m) is None else float(case.markers[m]) for m in MARKER_FLAGS]


def class_pos_weight(setting: float | str | None, labels: Sequence[int | None]) -> float | None:
    """The positive-class weight of the classification loss: ``"balanced"`` = negatives / positives of the
    labelled training cases."""
    if setting != "balanced":
        return None if setting is None else float(setting)
    known = [y for y in labels if y is not None]
    pos = sum(known)
    return float((len(known) - pos) / pos) if pos else None


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


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("epoch_*.pt"))
    return ckpts[-1] if ckpts else None


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})


def _init_weights_info(path: Path | None) -> dict[str, str] | None:
    """Provenance of the starting weights of a fine-tuning run (path and sha256), or None."""
    if path is None:
        return None
    import hashlib

    return {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def _run_config(
    preset: Preset, plans: Plans, options: TrainOptions, manifest_info: dict[str, Any], n: dict[str, int]
) -> dict[str, Any]:
    return {
        "preset": preset.model_dump(mode="json"),
        "plans": plans.model_dump(mode="json"),
        "plans_fingerprint": plans.fingerprint(),
        "model_config": preset.model.model_dump(mode="json"),
        "manifest": manifest_info,
        "seed": options.seed,
        "init_weights": _init_weights_info(options.init_weights),
        "n_cases": n,
    }


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
    sched = preset.schedule
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

    config = _run_config(preset, plans, options, manifest_info,
                         {"train": len(train_cases), "val": len(val_cases), "test": len(test_cases)})
    ckpt_dir = run_dir / "checkpoints"
    resume_from = latest_checkpoint(run_dir) if options.resume else None
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = run_dir / "config.json"
        if options.resume and cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            for key in ("preset", "plans", "model_config", "manifest", "seed", "n_cases"):
                if old.get(key) != config[key]:
                    raise ValueError(f"--resume: {key} differs from the run in {run_dir} ({cfg_path.name})")
        elif not options.resume and latest_checkpoint(run_dir) is not None:
            raise FileExistsError(f"{run_dir} already holds checkpoints; pass --resume or use a new directory")
        cfg_path.write_text(json.dumps(config, indent=2))
        for name, cases in (("train", train_cases), ("val", val_cases), ("test", test_cases)):
            (run_dir / f"{name}_ids.txt").write_text("".join(f"{c.case_id}\n" for c in cases))
        # preprocessing (first pass) in a process pool; later epochs read the cache
        build_cache(train_cases + val_cases, plans, options.cache_dir, options.preprocess_workers, options.progress)
    barrier(env)

    train_paths = [cache_path(options.cache_dir, c, plans) for c in train_cases]
    aug = AugmentationPlan(aug_copies=sched.aug_copies, include_original=sched.include_original, seed=options.seed)
    aux = [aux_targets(c, preset.model.aux_outputs) for c in train_cases]
    dataset = CachedCaseDataset(train_paths, [c.label for c in train_cases], plans, aug, aux)
    pos_weight = class_pos_weight(sched.cls_pos_weight, [c.label for c in train_cases])
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=options.seed, drop_last=False)
    loader = DataLoader(dataset, batch_size=sched.batch_size, sampler=sampler, num_workers=options.loader_workers,
                        pin_memory=device.startswith("cuda"), drop_last=False)

    model = DualOutputUNet3D(preset.model)
    if options.init_weights is not None and resume_from is None:
        load_init_weights(model, options.init_weights)
    model = model.to(device)
    if sched.channels_last_3d:
        model = model.to(memory_format=torch.channels_last_3d)
    n_params = count_parameters(model)
    net: torch.nn.Module = model
    if env.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if device.startswith("cuda") else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=sched.lr, weight_decay=sched.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(sched.milestones), gamma=sched.gamma)
    _, amp_dtype = _autocast(device, sched.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, history, elapsed = 0, [], 0.0
    if resume_from is not None:
        state = torch.load(resume_from, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, history, elapsed = int(state["epoch"]) + 1, list(state["history"]), float(state["elapsed_s"])
        if env.is_main:
            log.info("resumed from %s at epoch %d", resume_from.name, start_epoch)

    stop = sched.epochs if options.stop_after_epoch is None else min(sched.epochs, options.stop_after_epoch)
    for epoch in range(start_epoch, stop):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        net.train()
        lr = optimizer.param_groups[0]["lr"]
        sums = np.zeros(3)
        steps = 0
        from tqdm import tqdm

        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{sched.epochs}", disable=not (options.progress and env.is_main),
                   unit="step", dynamic_ncols=True)
        for batch in bar:
            x = batch["image"].to(device, non_blocking=True)
            m = batch["mask"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            x, m = augment_batch(x, m, batch["theta"], batch["augmented"])
            if sched.channels_last_3d:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            ctx, _ = _autocast(device, sched.amp)
            with ctx:
                seg, cls, aux_logits = net(x, with_aux=True)
            parts = dual_loss(seg, cls, m, y, sched.seg_weight, sched.cls_weight, pos_weight=pos_weight,
                              aux_logits=aux_logits, aux_target=batch["aux"].to(device), aux_weight=sched.aux_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts.total).backward()
            scaler.step(optimizer)
            scaler.update()
            sums += [parts.total.item(), parts.dice.item(), parts.bce.item()]
            steps += 1
            bar.set_postfix(loss=f"{sums[0] / steps:.4f}", lr=f"{lr:.2e}")
        scheduler.step()
        means = [all_reduce_mean(float(v) / max(steps, 1), env) for v in sums]
        row: dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr, "train_loss": means[0], "train_dice_loss": means[1], "train_bce": means[2],
            "val_dice": None, "val_auc": None,
        }
        if env.is_main and val_cases:
            preds = predict_cached(model, [cache_path(options.cache_dir, c, plans) for c in val_cases],
                                   [c.case_id for c in val_cases], [c.label for c in val_cases],
                                   plans.mask_threshold, device, sched.amp)
            row["val_dice"] = float(np.mean([p["dice"] for p in preds]))
            row["val_auc"] = _auc_or_none([p["label"] for p in preds], [p["probability"] for p in preds])
        elapsed += time.perf_counter() - t0
        row["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(row)
        if env.is_main:
            ckpt_dir.mkdir(exist_ok=True)
            state = {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": _rng_state(), "history": history, "elapsed_s": elapsed,
            }
            tmp = ckpt_dir / f"epoch_{epoch + 1:03d}.pt.tmp"
            torch.save(state, tmp)
            tmp.replace(ckpt_dir / f"epoch_{epoch + 1:03d}.pt")
            for old in sorted(ckpt_dir.glob("epoch_*.pt"))[:-KEEP_CHECKPOINTS]:
                old.unlink()
            _write_metrics(run_dir, history)
            log.info("epoch %d: %s", epoch + 1, {k: v for k, v in row.items() if v is not None})
        barrier(env)

    completed = len(history) >= sched.epochs
    if env.is_main and completed:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(run_dir / "model.safetensors"))
        config.update({
            "parameters": n_params, "training_seconds": round(elapsed, 1), "hardware": hardware_description(device),
            "world_size": env.world_size, "amp_dtype": str(amp_dtype) if amp_dtype else None,
            "torch_version": torch.__version__, "git_commit": git_commit(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    barrier(env)
    return FitResult(run_dir=run_dir, history=history, completed=completed, seconds=elapsed, parameters=n_params)
