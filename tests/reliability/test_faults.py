"""Fault injection: SIGTERM while requests run (in-flight work drains), tampered weights (start-up must stop
with a clear message and a non-zero exit), forced inference failures and a simulated device OOM (only that
request fails; the service stays ready), and result-store eviction by size and age.
Budget: about 60 s (two extra server starts)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.api.store import ResultStore

from .harness import ROOT, FaultServer, check_answer, start_fault_server


def _files(paths: list[Path]) -> list:
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]


def test_oom_and_inference_failure_fail_only_that_request(server: FaultServer, canary_series: list[Path]) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        server.set_faults(oom=1)
        r = client.post("/v1/predictions", files=_files(canary_series))
        assert check_answer(r, allow_503=True) == "503:out_of_memory"
        assert client.post("/v1/predictions", files=_files(canary_series)).status_code == 200
        metrics = client.get("/metrics").text
        assert any(line.startswith("ich_out_of_memory_total") and float(line.split()[-1]) >= 1
                   for line in metrics.splitlines())
        server.set_faults(error=1)
        r = client.post("/v1/predictions", files=_files(canary_series))
        assert r.status_code == 500 and r.json()["code"] == "internal_error"  # a server fault, answered cleanly
        assert "injected" not in r.text  # internals are not echoed to the client
    with httpx.Client(base_url=server.base_url, timeout=60) as client:  # new connection: see the keep-alive test below
        assert client.post("/v1/predictions", files=_files(canary_series)).status_code == 200
        assert client.get("/health/ready").status_code == 200


def test_keepalive_connection_survives_a_server_fault(server: FaultServer, canary_series: list[Path]) -> None:
    """Regression: keep-alive survives an unexpected error. A 500 used to be re-raised to Starlette's
    ServerErrorMiddleware, and uvicorn then dropped the keep-alive connection; the request_context middleware
    now answers it itself."""
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        server.set_faults(error=1)
        assert client.post("/v1/predictions", files=_files(canary_series)).status_code == 500
        assert client.get("/health/ready").status_code == 200


def test_sigterm_drains_in_flight(tmp_path: Path, canary_series: list[Path]) -> None:
    srv = start_fault_server(tmp_path, {"ICH_MAX_IN_FLIGHT": "2", "ICH_WARMUP_PASSES": "0",
                                        "ICH_SHUTDOWN_GRACE_S": "30", "ICH_UPLOAD_DIR": str(tmp_path)})
    try:
        srv.set_faults(delay_s=2.0)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(httpx.post, f"{srv.base_url}/v1/predictions", files=_files(canary_series),
                                   timeout=60) for _ in range(2)]
            time.sleep(1.5)  # both admitted and waiting in the (slowed) model
            srv.process.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=60) for f in futures]
        assert [r.status_code for r in answers] == [200, 200], [r.text[:300] for r in answers]
        assert srv.process.wait(30) in (0, -signal.SIGTERM)
        assert "service stopped" in srv.log_text()
        assert not list(tmp_path.glob("ich-upload-*"))
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tampered_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registered weights version (small random model) whose safetensors file is then altered by one byte."""
    from service_fixtures import random_weights

    from app.weights.registry import register_in_registry, save_weights

    w = random_weights()
    root = tmp_path_factory.mktemp("weights")
    out = save_weights(w.model, w.plans, w.config, root / "tamper-0.0.1",
                       {"name": "tamper", "version": "0.0.1", "threshold": 0.5, "intended_use": "tests"}, "test")
    register_in_registry(root, "tamper", "0.0.1", "2024-01-01T00:00:00Z", True)
    blob = bytearray((out / "model.safetensors").read_bytes())
    blob[-10] ^= 0x01
    (out / "model.safetensors").write_bytes(bytes(blob))
    return root


def test_tampered_weights_stop_startup(tampered_weights: Path, tmp_path: Path) -> None:
    """Regression: tampered weights stop start-up. They used to leave a live process that was never ready."""
    env = {**os.environ, "ICH_WEIGHTS_DIR": str(tampered_weights), "ICH_PORT": "0", "ICH_DEVICE": "cpu",
           "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stderr or b"")[-2000:]
        pytest.fail(f"the server kept running with tampered weights: {out!r}")
    assert proc.returncode != 0
    assert "checksum_mismatch" in proc.stderr + proc.stdout


def test_store_eviction_by_size_and_age() -> None:
    now = [1000.0]
    store = ResultStore(max_items=3, max_bytes=3 * (1000 + 4096), ttl_s=60.0, clock=lambda: now[0])
    for i in range(5):
        store.put(f"r{i}", {"id": i}, {"mask.nii.gz": b"x" * 1000})
        now[0] += 10.0
    assert store.get("r0") is None and store.get("r1") is None  # evicted by count/size, oldest first
    assert [store.get(f"r{i}") is not None for i in (2, 3, 4)] == [True, True, True]
    store.put("big", {"id": "big"}, {"seg.dcm": b"y" * 10_000})  # larger than the byte budget alone
    assert store.get("big") is not None and store.stats()["items"] == 1  # newest kept, others evicted
    assert store.stats()["bytes"] == 10_000 + 4096
    store.put("r5", {"id": 5}, {"mask.nii.gz": b"x" * 10})
    now[0] += 59.9
    assert store.get("r5") is not None  # within TTL
    now[0] += 0.2
    assert store.get("r5") is None and store.stats() == {"items": 0, "bytes": 0}  # expired after TTL


def test_results_expire_through_api(tmp_path: Path, canary_series: list[Path]) -> None:
    srv = start_fault_server(tmp_path, {"ICH_WARMUP_PASSES": "0", "ICH_RESULT_TTL_S": "3",
                                        "ICH_RESULT_MAX_ITEMS": "2"})
    try:
        with httpx.Client(base_url=srv.base_url, timeout=60) as client:
            ids = [client.post("/v1/predictions", files=_files(canary_series)).json()["id"] for _ in range(3)]
            codes = [client.get(f"/v1/predictions/{i}").status_code for i in ids]
            assert codes == [404, 200, 200]  # bounded by count
            time.sleep(3.2)
            assert client.get(f"/v1/predictions/{ids[-1]}").status_code == 404  # expired
            assert client.get(f"/v1/predictions/{ids[-1]}/seg.dcm").status_code == 404
            print(json.dumps({"store": "evicted by count and TTL through the API"}))
    finally:
        srv.stop()
