"""Shared harness of the reliability suite (also imported by ``bench/fuzz_service.py`` and
``bench/load_service.py``).

* :func:`start_fault_server` starts ``tests/reliability/fault_server.py`` -- the real app under uvicorn on a
  free loopback port, serving the deterministic small random model of ``tests/service_fixtures.py`` wrapped
  in a fault injector driven by a JSON control file (``ICH_TEST_FAULT_FILE``) -- and waits for readiness.
* :func:`write_canary_series` writes a small CT phantom (real DICOM, pydicom) whose patient module holds
  recognisable canary identifiers, so any leak into logs, metrics or bodies can be searched for.
* :func:`check_answer` is the oracle every fuzz and adversarial case must satisfy: 200 with a well-formed
  result, or problem+json with a documented 4xx code (503 only for capacity), never a 5xx.

Only 127.0.0.1 servers started here are contacted; every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom

TESTS_DIR = Path(__file__).resolve().parents[1]
ROOT = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:  # service_fixtures lives in tests/ (not a package)
    sys.path.insert(0, str(TESTS_DIR))

from service_fixtures import ServerProcess, free_port, write_phantom_series  # noqa: E402

FAULT_SERVER = Path(__file__).resolve().with_name("fault_server.py")

# Canary identifiers: distinctive strings that cannot occur by chance in logs or bodies.
CANARY_NAME = "Canarywick^Zebedee"
CANARY_ID = "CANARY-7731-XQ"
CANARY_BIRTH_DATE = "19230417"
CANARY_ACCESSION = "ACCCANARY99"
CANARY_STRINGS = ("Canarywick", "Zebedee", CANARY_ID, CANARY_BIRTH_DATE, CANARY_ACCESSION)

# Documented problem codes (README.md) by status; 503 only for capacity/readiness/timeouts.
CLIENT_CODES: dict[int, set[str]] = {
    400: {"empty_input", "archive_invalid", "invalid_request"},
    401: {"unauthorized"},
    404: {"not_found"},
    408: {"request_timeout"},
    413: {"body_too_large", "too_many_files", "archive_limit_exceeded"},
    415: {"not_dicom", "unsupported_transfer_syntax", "unsupported_media_type"},
    422: {"no_image_series", "not_ct", "ambiguous_series", "series_not_found", "too_few_slices", "missing_slices",
          "conflicting_duplicates", "corrupt_pixel_data", "not_axial", "inconsistent_geometry", "brain_not_found",
          "validation_error", "unsupported_sop_class", "invalid_dicom"},
    503: {"overloaded", "not_ready", "processing_timeout", "out_of_memory"},
}
RESULT_KEYS = {"id", "model", "input", "expansion", "haematoma", "links", "timings_ms"}


def write_canary_series(out_dir: Path, *, n_slices: int = 12, size: int = 64, seed: int = 0,
                        modality: str = "CT") -> list[Path]:
    """A phantom axial CT series (tests/service_fixtures.py) re-labelled with the canary patient module.
    Geometry: LPS, axial, pixel spacing ``180/size`` mm, slice spacing 5 mm; HU stored with slope 1."""
    paths = write_phantom_series(out_dir, n_slices=n_slices, size=size, seed=seed, modality=modality)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientName = CANARY_NAME
        ds.PatientID = CANARY_ID
        ds.PatientBirthDate = CANARY_BIRTH_DATE
        ds.AccessionNumber = CANARY_ACCESSION
        ds.InstitutionName = "Canarywick Memorial"
        ds.save_as(p, enforce_file_format=True)
    return paths


def canary_hits(text: str) -> list[str]:
    """The canary strings found in ``text`` (case-insensitive)."""
    low = text.lower()
    return [c for c in CANARY_STRINGS if c.lower() in low]


@dataclass
class FaultServer(ServerProcess):
    """A running fault server; ``set_faults`` rewrites the control file read before every forward pass."""

    fault_file: Path = Path()

    def set_faults(self, **faults: float | int) -> None:
        tmp = self.fault_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(faults))
        os.replace(tmp, self.fault_file)

    def ready_status(self, timeout: float = 10.0) -> int:
        return httpx.get(f"{self.base_url}/health/ready", timeout=timeout).status_code


def start_fault_server(tmp: Path, env: dict[str, str] | None = None, *, ready_timeout: float = 120.0,
                       weights_dir: Path | None = None, wait_ready: bool = True) -> FaultServer:
    """Start the fault server (real uvicorn process, loopback) with ``ICH_*`` settings from ``env``; the
    process's stdout and stderr go to ``tmp/server-<port>.log``."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    fault_file = tmp / f"faults-{port}.json"
    fault_file.write_text("{}")
    full_env = {**os.environ, "ICH_HOST": "127.0.0.1", "ICH_PORT": str(port), "ICH_DEVICE": "cpu",
                "ICH_COMPILE": "off",  # compiling costs 10-20 s per start; tests/test_api_compiled.py covers "on"
                "OMP_NUM_THREADS": "1", "ICH_TEST_FAULT_FILE": str(fault_file),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                **(env or {})}
    cmd = [sys.executable, str(FAULT_SERVER)]
    if weights_dir is not None:
        cmd += ["--weights-dir", str(weights_dir)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = FaultServer(f"http://127.0.0.1:{port}", proc, log_path, fault_file=fault_file)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if not wait_ready:
                return server
            raise RuntimeError(f"server exited early:\n{server.log_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            status = httpx.get(f"{server.base_url}/health/live", timeout=2).status_code
            if status == 200 and (not wait_ready or server.ready_status() == 200):
                return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not up within {ready_timeout} s:\n{server.log_text()[-4000:]}")


def check_answer(r: httpx.Response, *, allow_503: bool = False) -> str:
    """The oracle: return the outcome label (``"200"`` or ``"<status>:<code>"``) or raise AssertionError."""
    if r.status_code == 200:
        body = r.json()
        assert RESULT_KEYS <= body.keys(), body
        p, raw = body["expansion"]["probability"], body["expansion"]["raw_probability"]
        assert 0.0 <= raw <= 1.0 and body["haematoma"]["volume_ml"] >= 0.0
        assert (p is not None and 0.0 <= p <= 1.0) if body["haematoma"]["detected"] else p is None
        return "200"
    assert r.status_code < 500 or (allow_503 and r.status_code == 503), f"{r.status_code}: {r.text[:2000]}"
    assert r.headers.get("content-type", "").startswith("application/problem+json"), r.text[:500]
    body = r.json()
    assert body["status"] == r.status_code and {"type", "title", "detail", "code"} <= body.keys(), body
    assert body["code"] in CLIENT_CODES.get(r.status_code, set()), f"undocumented {r.status_code} {body}"
    if r.status_code == 503:
        assert int(r.headers["Retry-After"]) > 0
    return f"{r.status_code}:{body['code']}"
