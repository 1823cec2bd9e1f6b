"""Test helpers for the service: a small CT phantom written as real DICOM files, a small random model,
and a REAL uvicorn server process on a free loopback port (session fixture in the API tests).

Run as a script (``python tests/service_fixtures.py --port P --weights-dir D``) it serves the app: with the
weights registry when ``D/registry.json`` exists, else with a deterministic random small model (seeded), so
the service tests run before trained default weights exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

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


# --- small random model ----------------------------------------------------------------------------------
@dataclass
class RandomWeights:
    """Duck-typed like ``app.weights.registry.LoadedWeights`` (model, plans, config, manifest, ...)."""

    model: Any
    plans: Any
    config: Any
    manifest: dict = field(default_factory=dict)
    name: str = "test-random"
    version: str = "0.0.0"
    weights_sha256: str = "0" * 64
    path: Path = Path(".")
    threshold: float = 0.5


def small_plans() -> Any:
    from app.preprocessing.plans import Plans

    return Plans(name="test-small", version="0.0.1", matrix_zyx=(16, 64, 64), interpolation="linear")


def random_weights(seed: int = 0) -> RandomWeights:
    import torch

    from app.model.config import ModelConfig
    from app.model.unet import DualOutputUNet3D

    torch.manual_seed(seed)
    config = ModelConfig(encoder_widths=(4, 8, 16), bridge_width=16, decoder_widths=(16, 8), cls_width=16)
    model = DualOutputUNet3D(config).eval()
    return RandomWeights(model=model, plans=small_plans(), config=config,
                         manifest={"intended_use": "tests only"})


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
    """Start ``tests/service_fixtures.py`` (uvicorn) on a free loopback port and wait for /health/ready."""
    import httpx

    port = free_port()
    log_path = tmp / f"server-{port}.log"
    full_env = {**os.environ, "ICH_HOST": "127.0.0.1", "ICH_PORT": str(port), "ICH_DEVICE": "cpu",
                "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                **(env or {})}
    cmd = [sys.executable, str(Path(__file__).resolve())]
    if weights_dir is not None:
        cmd += ["--weights-dir", str(weights_dir)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/health/ready", timeout=2).status_code == 200:
                return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready within {ready_timeout} s:\n{server.log_text()[-4000:]}")


def _main() -> None:
    import uvicorn

    from app.api import ServiceSettings, create_app

    parser = argparse.ArgumentParser()
    parser.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.weights_dir is not None:
        app = create_app(ServiceSettings(weights_dir=args.weights_dir))
    else:
        from app.inference import Predictor

        settings = ServiceSettings()
        app = create_app(settings, predictor=Predictor(random_weights(), "cpu"))
    settings = app.state.settings
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace_s))


if __name__ == "__main__":
    _main()
