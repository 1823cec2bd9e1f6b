"""Service throughput and latency: a real ``python -m app serve`` on loopback, hit by 1/2/4/8 httpx clients.

The server is started and stopped here (SIGTERM, then SIGKILL after a grace period). Each concurrency level sends
a bounded number of requests (``application/zip`` of one series); latency is upload-to-JSON as the client sees it.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def zip_folder(folder: Path) -> bytes:
    """The series as an in-memory ZIP (stored, no compression: the service's cost, not zlib's, is measured)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zf.write(path, path.name)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM (peak resident set) of a Linux process, bytes; None where /proc is unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextmanager
def running_server(weights_dir: Path, device: str, *, max_in_flight: int = 8, startup_timeout_s: float = 300.0):
    """Start the service on a free loopback port; yield (base_url, process); stop it on exit."""
    port = free_port()
    env = dict(os.environ, ICH_MAX_IN_FLIGHT=str(max_in_flight), ICH_WARMUP_PASSES="1", ICH_LOG_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--weights-dir", str(weights_dir), "--device", device]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                raise RuntimeError(f"server exited with {proc.returncode}: {err}")
            try:
                if httpx.get(f"{base}/health/ready", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server not ready in time")
            time.sleep(0.5)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def percentiles(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 95, 99)}


def load_level(base: str, body: bytes, clients: int, requests: int, timeout_s: float = 600.0) -> dict[str, Any]:
    """``requests`` POSTs shared by ``clients`` threads (one httpx.Client each). Seconds and requests/s."""
    latencies: list[float] = []
    forward_s: list[float] = []  # the server's own timing of the forward pass of each successful request
    server_s: list[float] = []  # the server's own timing of the whole request (read to response body)
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=timeout_s) as c:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                try:
                    r = c.post(f"{base}/v1/predictions", content=body, headers={"content-type": "application/zip"})
                    ok = r.status_code == 200
                    detail = f"HTTP {r.status_code}: {r.text[:200]}"
                    timings = r.json()["timings_ms"] if ok else {}
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                        forward_s.append(timings["inference"] / 1000.0)
                        server_s.append(timings["total"] / 1000.0)
                    else:
                        failures.append(detail)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"clients": clients, "requests": requests, "ok": len(latencies),
                           "failures": failures[:3], "wall_s": wall,
                           "throughput_rps": len(latencies) / wall if wall > 0 else 0.0}
    if latencies:
        out["latency_s"] = percentiles(latencies)
        lat, fw = np.asarray(latencies), np.asarray(forward_s)
        # upload -> JSON minus the forward pass, over upload -> JSON (meaningful with one client: with more,
        # latency also includes waiting for the model)
        out["non_forward_fraction"] = float(np.median((lat - fw) / lat))
        out["forward_s_median"] = float(np.median(fw))
        # HTTP overhead: upload, multipart/ZIP spooling, routing, JSON, outside the server's stage timings
        out["http_overhead_s_median"] = float(np.median(lat - np.asarray(server_s)))
    return out


def bench_service(weights_dir: Path, series_folder: Path, device: str, levels: Sequence[int],
                  requests_per_level: int) -> dict[str, Any]:
    body = zip_folder(series_folder)
    with running_server(weights_dir, device, max_in_flight=max(levels)) as (base, proc):
        # one untimed request first: the first upload/read/postprocess of a fresh process pays one-off costs
        # (imports, allocator growth) that a running service does not; it is reported apart
        first = load_level(base, body, 1, 1)
        results = [load_level(base, body, c, max(c, requests_per_level)) for c in levels]
        rss = peak_rss_bytes(proc.pid)
    single = next((r["throughput_rps"] for r in results if r["clients"] == 1), None)
    for r in results:
        r["throughput_vs_single"] = r["throughput_rps"] / single if single else None
    one = next((r for r in results if r["clients"] == 1 and "non_forward_fraction" in r), None)
    return {"device": device, "upload_bytes": len(body), "first_request": first, "levels": results,
            "server_peak_rss_bytes": rss,
            "single_client_non_forward_fraction": one["non_forward_fraction"] if one else None}
