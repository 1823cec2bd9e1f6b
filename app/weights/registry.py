"""Versioned model weights: safetensors + manifest.json + MODEL_CARD.md, verified on load.

Layout::

    weights/registry.json                  {"default": "<name>-<version>", "models": [{"id", "name", "version",
                                            "created", "path"}, ...]}
    weights/<name>-<version>/model.safetensors
    weights/<name>-<version>/manifest.json  name, version, created, git_commit, plans, plans_fingerprint,
                                            model_config, training preset, manifest fingerprint, metrics,
                                            threshold, parameters, files {name: sha256}, intended_use,
                                            postprocessing (optional: detection, calibration,
                                            infratentorial; see app/model/postprocessing.py), ...
    weights/<name>-<version>/MODEL_CARD.md

Weights are only ever stored as safetensors (no pickle is read or written). :func:`load_weights` verifies the
sha256 of every file listed in the manifest, recomputes the plans fingerprint from the stored plans, checks the
stored model config against its recorded fingerprint and every tensor name and shape against the architecture the
config builds, and refuses any difference with :class:`WeightsError` naming the file and what differs. The
optional ``"postprocessing"`` block is validated too (``invalid_postprocessing``); absent, the documented
defaults of :class:`~app.model.postprocessing.Postprocessing` apply. The manifest's ``threshold`` applies to the
calibrated expansion probability.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from app.model.config import ModelConfig
from app.model.postprocessing import MANIFEST_KEY as POSTPROCESSING_KEY
from app.model.postprocessing import Postprocessing
from app.model.unet import DualOutputUNet3D, count_parameters
from app.preprocessing.plans import Plans

REGISTRY_FILE = "registry.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
MANIFEST_SCHEMA = 1
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class WeightsError(Exception):
    """Weights cannot be used. ``code``: not_found, invalid_registry, invalid_manifest, checksum_mismatch,
    plans_mismatch, config_mismatch, invalid_postprocessing, unsafe_format, exists."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass
class LoadedWeights:
    model: DualOutputUNet3D
    plans: Plans
    config: ModelConfig
    manifest: dict[str, Any]
    name: str
    version: str
    weights_sha256: str
    path: Path
    threshold: float  # decision threshold on the calibrated expansion probability (0-1)
    postprocessing: Postprocessing = field(default_factory=Postprocessing)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_id(name: str, version: str) -> str:
    return f"{name}-{version}"


def read_registry(weights_dir: Path) -> dict[str, Any]:
    """The registry file, or an empty registry when it does not exist."""
    path = Path(weights_dir) / REGISTRY_FILE
    if not path.exists():
        return {"default": None, "models": []}
    try:
        reg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError("invalid_registry", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(reg, dict) or not isinstance(reg.get("models"), list):
        raise WeightsError("invalid_registry", f"{path} must be an object with a 'models' list")
    return reg


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the weights must be readable by a non-root service user
    os.replace(tmp, path)


def write_registry(weights_dir: Path, registry: dict[str, Any]) -> None:
    Path(weights_dir).mkdir(parents=True, exist_ok=True)
    _atomic_write_text(Path(weights_dir) / REGISTRY_FILE, json.dumps(registry, indent=2) + "\n")


def resolve_model_dir(weights_dir: Path, version: str | None = None) -> Path:
    """The folder of ``version`` (``"<name>-<version>"``, a bare version if unique, or None for the default)."""
    weights_dir = Path(weights_dir)
    reg = read_registry(weights_dir)
    if version is None:
        version = reg.get("default")
        if not version:
            raise WeightsError("not_found", f"no default weights registered in {weights_dir / REGISTRY_FILE}")
    ids = [m.get("id") for m in reg["models"]]
    if version not in ids:
        matches = [m["id"] for m in reg["models"] if m.get("version") == version]
        if len(matches) == 1:
            version = matches[0]
        elif len(matches) > 1:
            raise WeightsError("not_found", f"version {version!r} is ambiguous in {weights_dir}: {matches}")
        elif not (weights_dir / version).is_dir():
            raise WeightsError("not_found", f"weights {version!r} are not registered in {weights_dir}")
    path = weights_dir / version
    if not path.is_dir():
        raise WeightsError("not_found", f"weights folder {path} does not exist")
    return path


def _postprocessing(manifest: dict[str, Any], where: Path | str) -> Postprocessing:
    """The manifest's ``"postprocessing"`` block (defaults when absent); ``invalid_postprocessing`` otherwise."""
    try:
        return Postprocessing.from_manifest(manifest)
    except (ValidationError, ValueError, TypeError) as exc:
        raise WeightsError("invalid_postprocessing",
                           f"{where}: the {POSTPROCESSING_KEY!r} block is invalid: {exc}") from None


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = DualOutputUNet3D(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_weights(weights_dir: Path, version: str | None = None, device: str = "cpu") -> LoadedWeights:
    """Load and verify registered weights (the default when ``version`` is None); see the module docstring."""
    model_dir = resolve_model_dir(Path(weights_dir), version)
    manifest_path = model_dir / MANIFEST_FILE
    if not manifest_path.exists():
        raise WeightsError("invalid_manifest", f"{manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError("invalid_manifest", f"{manifest_path} is not valid JSON: {exc}") from None
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise WeightsError("invalid_manifest", f"{manifest_path}: 'files' must list {WEIGHTS_FILE} with its sha256")
    for name, expected in files.items():
        f = model_dir / name
        if Path(name).name != name or not f.is_file():
            raise WeightsError("checksum_mismatch", f"{f}: listed in {MANIFEST_FILE} but missing")
        actual = sha256_file(f)
        if actual != expected:
            raise WeightsError(
                "checksum_mismatch",
                f"{f}: sha256 {actual} does not match {expected} recorded in {MANIFEST_FILE}; the file is corrupt "
                "or was modified after registration",
            )
    for unsafe in ("*.pt", "*.pth", "*.pkl", "*.bin", "*.ckpt"):
        if any(model_dir.glob(unsafe)):
            raise WeightsError("unsafe_format", f"{model_dir} holds a pickle-based file ({unsafe}); only safetensors")
    try:
        plans = Plans.model_validate(manifest["plans"])
    except (KeyError, ValidationError) as exc:
        raise WeightsError("plans_mismatch", f"{manifest_path}: the stored plans are invalid: {exc}") from None
    if plans.fingerprint() != manifest.get("plans_fingerprint"):
        raise WeightsError(
            "plans_mismatch",
            f"{manifest_path}: plans fingerprint recomputed from the stored plans ({plans.fingerprint()[:12]}) "
            f"differs from the recorded one ({str(manifest.get('plans_fingerprint'))[:12]}); the plans were edited",
        )
    try:
        config = ModelConfig.model_validate(manifest["model_config"])
    except (KeyError, ValidationError) as exc:
        raise WeightsError("config_mismatch", f"{manifest_path}: the stored model config is invalid: {exc}") from None
    if "model_config_fingerprint" in manifest and config.fingerprint() != manifest["model_config_fingerprint"]:
        raise WeightsError("config_mismatch", f"{manifest_path}: model config differs from its recorded fingerprint")
    postprocessing = _postprocessing(manifest, manifest_path)
    weights_path = model_dir / WEIGHTS_FILE
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise WeightsError("checksum_mismatch", f"{weights_path}: not a readable safetensors file: {exc}") from None
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for k in wrong[:5]:
            details.append(f"{k}: shape {tuple(state[k].shape)} in the file, {expected[k]} from the model config")
        raise WeightsError("config_mismatch", f"{weights_path} does not match the model config: {'; '.join(details)}")
    model = DualOutputUNet3D(config)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return LoadedWeights(
        model=model,
        plans=plans,
        config=config,
        manifest=manifest,
        name=str(manifest.get("name")),
        version=str(manifest.get("version")),
        weights_sha256=files[WEIGHTS_FILE],
        path=model_dir,
        threshold=float(manifest.get("threshold", 0.5)),
        postprocessing=postprocessing,
    )


def save_weights(
    model: DualOutputUNet3D, plans: Plans, config: ModelConfig, out_dir: Path, manifest: dict, model_card: str
) -> Path:
    """Write ``model.safetensors``, ``MODEL_CARD.md`` and ``manifest.json`` (with plans, config, parameter count and
    the sha256 of both files) into ``out_dir``, which must not exist yet. Returns ``out_dir``.

    ``manifest`` supplies the descriptive fields (name, version, metrics, threshold, intended use, ...); the
    technical fields are filled in here and override any given value.
    """
    out_dir = Path(out_dir)
    for key in ("name", "version"):
        if not manifest.get(key):
            raise WeightsError("invalid_manifest", f"manifest needs a {key!r}")
    if not _NAME_RE.match(str(manifest["name"])):
        raise WeightsError("invalid_manifest", f"invalid name {manifest['name']!r}")
    if not _VERSION_RE.match(str(manifest["version"])):
        raise WeightsError("invalid_manifest", f"version must be X.Y.Z, got {manifest['version']!r}")
    if out_dir.exists():
        raise WeightsError("exists", f"{out_dir} already exists; versions are immutable, choose a new version")
    if model.config != config:
        raise WeightsError("config_mismatch", "the model was not built from the given model config")
    if manifest.get(POSTPROCESSING_KEY) is not None:  # stored as validated (defaults filled in)
        manifest = {**manifest, POSTPROCESSING_KEY: _postprocessing(manifest, "manifest").model_dump(mode="json")}
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "name": str(manifest["name"]),
                                                            "version": str(manifest["version"])})
        (tmp / MODEL_CARD_FILE).write_text(model_card)
        full = dict(manifest)
        full.update({
            "schema": MANIFEST_SCHEMA,
            "created": manifest.get("created") or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "plans": plans.model_dump(mode="json"),
            "plans_fingerprint": plans.fingerprint(),
            "model_config": config.model_dump(mode="json"),
            "model_config_fingerprint": config.fingerprint(),
            "parameters": count_parameters(model),
            "files": {n: sha256_file(tmp / n) for n in (WEIGHTS_FILE, MODEL_CARD_FILE)},
        })
        (tmp / MANIFEST_FILE).write_text(json.dumps(full, indent=2) + "\n")
        for f in (tmp, *tmp.iterdir()):  # mkdtemp creates 0700; readable by a non-root service user
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        os.replace(tmp, out_dir)
    except BaseException:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
        raise
    return out_dir


def register_in_registry(weights_dir: Path, name: str, version: str, created: str, make_default: bool) -> dict:
    """Add ``<name>-<version>`` to ``weights/registry.json`` (the first model becomes the default)."""
    reg = read_registry(weights_dir)
    mid = model_id(name, version)
    reg["models"] = [m for m in reg["models"] if m.get("id") != mid]
    reg["models"].append({"id": mid, "name": name, "version": version, "created": created, "path": mid})
    reg["models"].sort(key=lambda m: m["id"])
    if make_default or not reg.get("default"):
        reg["default"] = mid
    write_registry(weights_dir, reg)
    return reg
