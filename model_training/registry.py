"""``register``: turn a finished, evaluated training run into versioned weights ``weights/<name>-<version>/``.

Reads the run's ``config.json`` and ``model.safetensors`` and its ``evaluation.json`` (written by ``evaluate``),
builds the manifest (version, date, git commit, plans, model config, preset, training-manifest fingerprint,
metrics, decision threshold, parameter count, intended use) and the model card, saves them with
:func:`app.weights.registry.save_weights` (which adds the sha256 of every file) and updates
``weights/registry.json``. Loading the result back through :func:`app.weights.registry.load_weights` verifies it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from app.model.config import ModelConfig
from app.model.unet import count_parameters
from app.weights.registry import (
    WeightsError,
    load_weights,
    model_id,
    register_in_registry,
    save_weights,
)
from model_training.training.evaluation_run import load_run_model

INTENDED_USE = ("Research and demonstration only; not for clinical use. Not a medical device; predictions must "
                "not inform the care of any patient.")
PAPER_PARAMETERS = 3_802_578


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def supplement_parameter_note(config: ModelConfig, parameters: int) -> str:
    default = ModelConfig()
    from app.model.unet import DualOutputUNet3D

    paper_arch = count_parameters(DualOutputUNet3D(default))
    return (
        f"The paper reports {PAPER_PARAMETERS:,} parameters, but its layer description (Supplemental Figure 1: "
        "encoder 16/32/64, bridge 128, decoder 64/32, classification head of two 128-filter 3x3x3 convolutions) "
        f"gives {paper_arch:,} parameters with two convolutions per level as implemented here "
        "(no standard reading of the description reaches the published number). "
        f"These weights use the architecture recorded in manifest.json and have {parameters:,} parameters."
    )


def render_model_card(name: str, version: str, run_cfg: dict[str, Any], evaluation: dict[str, Any],
                      table2_md: str | None, parameters: int, config: ModelConfig, synthetic: bool) -> str:
    preset = run_cfg["preset"]
    sched = preset["schedule"]
    plans = run_cfg["plans"]
    test = evaluation["test"]
    ci = test.get("auc_ci95")
    auc = "n/a" if test.get("auc") is None else f"{test['auc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}, DeLong)"
    row = test.get("cnn_row") or {}
    sens = (row.get("sensitivity") or {}).get("estimate") if isinstance(row.get("sensitivity"), dict) else None
    spec = (row.get("specificity") or {}).get("estimate") if isinstance(row.get("specificity"), dict) else None
    manifest = run_cfg.get("manifest", {})
    lines = [
        f"# Model card: {name} {version}",
        "",
        "Dual-output 3D U-Net (haematoma segmentation + early haematoma expansion) after Zhong et al., "
        "Stroke & Vascular Neurology 2021.",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Training data",
        "",
        (f"Trained on the cohort of `{Path(manifest.get('path', '?')).name}` ({manifest.get('n_cases', '?')} cases, "
         f"manifest fingerprint `{str(manifest.get('fingerprint', ''))[:16]}`), temporal split at "
         f"{manifest.get('cutoff', '?')}: {run_cfg['n_cases']['train']} training, {run_cfg['n_cases']['val']} "
         f"validation, {run_cfg['n_cases']['test']} test cases."),
    ]
    if synthetic:
        lines += ["", "**The training and test data are synthetic head-CT phantoms (`python -m model_training "
                  "synth`), not patients: the metrics below describe performance on phantoms and say nothing "
                  "about clinical performance.**"]
    lines += [
        "",
        "## Training",
        "",
        f"- Preset `{preset['name']}`: {preset['description']}",
        f"- Matrix {tuple(plans['matrix_zyx'])} (z, y, x) over a {tuple(plans['fov_mm_zyx'])} mm field of view; "
        f"plans `{plans['name']}` {plans['version']}",
        f"- Adam, learning rate {sched['lr']:g} x {sched['gamma']:g} at epochs {list(sched['milestones'])}, "
        f"{sched['epochs']} epochs, batch {sched['batch_size']}, augmentation x{sched['aug_copies']}, loss "
        f"{sched['seg_weight']:g} x Dice + {sched['cls_weight']:g} x BCE, seed {run_cfg.get('seed')}",
        f"- Training time {run_cfg.get('training_seconds', '?')} s on {run_cfg.get('hardware', '?')} "
        f"(world size {run_cfg.get('world_size', 1)}, torch {run_cfg.get('torch_version', '?')})",
        f"- Code: git commit {run_cfg.get('git_commit') or 'unknown'}",
        "",
        "## Architecture and parameter count",
        "",
        f"Encoder {list(config.encoder_widths)}, bridge {config.bridge_width}, decoder {list(config.decoder_widths)}, "
        f"{config.convs_per_level} convolutions per level, {config.norm} normalisation, classification head "
        f"{config.cls_convs} x {config.cls_width} filters: **{parameters:,} parameters**.",
        "",
        supplement_parameter_note(config, parameters),
        "",
        "## Evaluation (held-out test set)",
        "",
        "| Metric | Value |",
        "|---|---|",
        f"| Test cases (expansion) | {evaluation['n']['test']} ({evaluation['n']['test_positive']}) |",
        f"| Dice, test (mean ± SD, {evaluation.get('dice_grid') or 'model grid'}) | {_fmt(test['dice_mean'])} ± "
        f"{_fmt(test['dice_sd'])} |",
        f"| Dice, training (mean ± SD, {evaluation.get('train_dice_grid') or 'model grid'}) | "
        f"{_fmt(evaluation['train']['dice_mean'])} ± "
        f"{_fmt(evaluation['train']['dice_sd'])} |",
        f"| AUC | {auc} |",
        f"| Decision threshold (Youden, training) | {evaluation['threshold']:.4f} |",
        f"| Sensitivity / specificity at the threshold | {_fmt(sens)} / {_fmt(spec)} |",
    ]
    if table2_md:
        lines += ["", "## Table 2 layout", "", table2_md.strip().replace("\n# ", "\n### ")]
    return "\n".join(lines) + "\n"


def register_run(run_dir: Path, version: str, *, name: str | None = None, weights_dir: Path = Path("weights"),
                 make_default: bool = False, evaluation_path: Path | None = None, synthetic: bool = False,
                 card_notes: str | None = None) -> Path:
    """Register ``run_dir`` as ``<weights_dir>/<name>-<version>/`` and verify it by loading it back."""
    run_dir = Path(run_dir)
    model, plans, run_cfg = load_run_model(run_dir, "cpu")
    eval_path = evaluation_path or run_dir / "evaluation.json"
    if not eval_path.exists():
        raise FileNotFoundError(f"{eval_path} not found: run `python -m model_training evaluate` first")
    evaluation = json.loads(eval_path.read_text())
    table2_path = Path(evaluation.get("report_dir", "")) / "table2.md"
    table2_md = table2_path.read_text() if table2_path.is_file() else None
    config = model.config
    name = name or f"ich-{run_cfg['preset']['name']}"
    parameters = count_parameters(model)
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = {
        "name": name,
        "version": version,
        "created": created,
        "git_commit": run_cfg.get("git_commit"),
        "training_preset": run_cfg["preset"],
        "training_manifest_fingerprint": run_cfg.get("manifest", {}).get("fingerprint"),
        "training_manifest_sha256": run_cfg.get("manifest", {}).get("sha256"),
        "training": {k: run_cfg.get(k) for k in ("seed", "n_cases", "training_seconds", "hardware", "world_size",
                                                 "torch_version", "amp_dtype")},
        "metrics": {"test": {k: evaluation["test"][k] for k in ("dice_mean", "dice_sd", "auc", "auc_ci95")},
                    "train": evaluation["train"], "n": evaluation["n"], "dice_grid": evaluation.get("dice_grid")},
        "threshold": evaluation["threshold"],
        "threshold_source": evaluation.get("threshold_source"),
        "mask_threshold": plans.mask_threshold,
        "paper_reported_parameters": PAPER_PARAMETERS,
        "intended_use": INTENDED_USE,
        "synthetic_training_data": synthetic,
    }
    card = render_model_card(name, version, run_cfg, evaluation, table2_md, parameters, config, synthetic)
    if card_notes:
        card = card.rstrip("\n") + "\n\n" + card_notes.strip() + "\n"
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    out = save_weights(model, plans, config, weights_dir / model_id(name, version), manifest, card)
    register_in_registry(weights_dir, name, version, created, make_default)
    loaded = load_weights(weights_dir, model_id(name, version))
    if loaded.plans != plans:
        raise WeightsError("plans_mismatch", f"{out}: plans changed on the round trip")
    return out
