"""Test helpers for the service: a small CT phantom written as real DICOM files, a small random model,
and a REAL uvicorn server process on a free loopback port (module fixture in the API tests).

:func:`start_server` runs the production entry point ``python -m app serve --weights-dir D`` (host and port
from ``ICH_HOST`` / ``ICH_PORT``): weights loaded through the registry in ``D``, checksums verified.
:func:`make_weights_dir` writes a registry holding a small seeded random model with
:func:`app.weights.registry.save_weights`, so the service tests run before trained default weights exist.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from system_components import wait_until_up

ROOT = Path(__file__).resolve().parents[1]


# --- phantom ---------------------------------------------------------------------------------------------
def phantom_volume(n_slices: int = 24, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """HU volume (z, y, x) of an ellipsoidal head: skull ~1000 HU, brain ~35 HU, a 60-70 HU haematoma.
    Returns (hu int16, haematoma mask uint8, pixel spacing mm, slice spacing mm)."""
    rng = np.random.default_rng(seed)
    px, dz = 180.0 / size, 5.0
    z, y, x = np.meshgrid(
        (np.arange(n_slices) - (n_slices - 1) / 2) * dz,
        (np.arange(size) - (size - 1) / 2) * px,
        (np.arange(size) - (size - 1) / 2) * px,
        indexing="ij",
    )
    r = np.sqrt((x / 70.0) ** 2 + (y / 85.0) ** 2 + (z / 70.0) ** 2)
    hu = np.full(r.shape, -1000.0)
    hu[r < 1.0] = 1000.0
    hu[r < 0.92] = 35.0
    haem = ((x - 20.0) ** 2 + (y + 10.0) ** 2 + (z / 1.0) ** 2) < 15.0**2
    hu[haem & (r < 0.92)] = 65.0
    hu += rng.normal(0.0, 3.0, hu.shape)
    return hu.round().astype(np.int16), haem.astype(np.uint8), px, dz


def write_phantom_series(out_dir: Path, *, n_slices: int = 24, size: int = 128, seed: int = 0,
                         modality: str = "CT") -> list[Path]:
    """One axial series as single-frame DICOM files (explicit VR little endian); returns the file paths."""
    hu, _, px, dz = phantom_volume(n_slices, size, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = modality
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "PHANTOM-0", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "A1", "1"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber = 2, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-(size - 1) / 2 * px, -(size - 1) / 2 * px, (k - (n_slices - 1) / 2) * dz]
        ds.PixelSpacing = [px, px]
        ds.SliceThickness = dz
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.KVP = 120
        ds.PixelData = hu[k].tobytes()
        path = out_dir / f"IM{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def zip_bytes(paths: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, arcname=f"series/{p.name}")
    return buffer.getvalue()


def stow_body(paths: list[Path], boundary: str = "ich-test-boundary") -> tuple[bytes, str]:
    parts = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
             for p in paths]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


# --- small model, saved and loaded through the weights registry -------------------------------------------
SMALL_NAME = "test-small"
SMALL_VERSION = "0.0.1"


def small_plans() -> Any:
    from app.preprocessing.plans import Plans

    return Plans(name="test-small", version="0.0.1", matrix_zyx=(16, 64, 64), interpolation="linear")


def small_model(seed: int = 0) -> tuple[Any, Any]:
    """A deterministic (seeded) random :class:`DualOutputUNet3D` of ~20 k parameters and its config."""
    import torch

    from app.model.config import ModelConfig
    from app.model.unet import DualOutputUNet3D

    torch.manual_seed(seed)
    config = ModelConfig(encoder_widths=(4, 8, 16), bridge_width=16, decoder_widths=(16, 8), cls_width=16)
    return DualOutputUNet3D(config).eval(), config


@dataclass
class RandomWeights:
    """In-memory stand-in for :class:`app.weights.registry.LoadedWeights` (same fields), for tests that wrap
    a :class:`~app.inference.Predictor` directly; the service tests load through the registry instead."""

    model: Any
    plans: Any
    config: Any
    manifest: dict
    name: str = SMALL_NAME
    version: str = "0.0.0"
    weights_sha256: str = "0" * 64
    path: Path = Path(".")
    threshold: float = 0.5


def random_weights(seed: int = 0) -> RandomWeights:
    """The small seeded model (:func:`small_model`) with :func:`small_plans`, not saved anywhere."""
    model, config = small_model(seed)
    return RandomWeights(model=model, plans=small_plans(), config=config, manifest={"intended_use": "tests only"})


def make_weights_dir(root: Path, seed: int = 0, version: str = SMALL_VERSION,
                     postprocessing: dict | None = None) -> Path:
    """A weights folder (``root``) holding one small random model written with
    :func:`app.weights.registry.save_weights` and registered as the default, exactly as
    ``python -m model_training register`` lays it out; the service loads it through the registry (checksums
    verified). ``postprocessing``: the manifest's post-processing block (none: the defaults). Returns ``root``."""
    from app.weights.registry import model_id, register_in_registry, save_weights

    model, config = small_model(seed)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"name": SMALL_NAME, "version": version, "threshold": 0.5, "intended_use": "tests only",
                "created": "2024-01-01T00:00:00Z", "metrics": {}}
    if postprocessing is not None:
        manifest["postprocessing"] = postprocessing
    save_weights(model, small_plans(), config, root / model_id(SMALL_NAME, version), manifest,
                 "# test-small\n\nRandom weights for the service tests; not a model.\n")
    register_in_registry(root, SMALL_NAME, version, manifest["created"], make_default=True)
    return root


# --- real server -----------------------------------------------------------------------------------------
def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(tmp: Path, env: dict[str, str] | None = None, ready_timeout: float = 60.0,
                 weights_dir: Path | None = None) -> ServerProcess:
    """Start ``python -m app serve`` (uvicorn) on a free loopback port and wait for /health/ready.

    ``weights_dir`` defaults to a fresh small-model registry under ``tmp`` (:func:`make_weights_dir`)."""
    if weights_dir is None:
        weights_dir = tmp / "weights"
        if not (weights_dir / "registry.json").exists():
            make_weights_dir(weights_dir)

    port = free_port()
    log_path = tmp / f"server-{port}.log"
    full_env = {**os.environ, "ICH_HOST": "127.0.0.1", "ICH_PORT": str(port), "ICH_DEVICE": "cpu",
                "ICH_COMPILE": "off",  # compiling costs 10-20 s per start; tests/test_api_compiled.py covers "on"
                "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                **(env or {})}
    cmd = [sys.executable, "-m", "app", "serve", "--weights-dir", str(weights_dir)]  # the production entry point
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_until_up(proc, f"{server.base_url}/health/ready", ready_timeout, log_path, "server", poll_s=0.2)
    except RuntimeError:
        server.stop()
        raise
    return server
