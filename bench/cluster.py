"""Shared-store and balancer figures: what the Redis store costs a synchronous request, and what a second replica
behind HAProxy adds. Real processes on loopback: ``redis-server``, ``haproxy`` (deploy/haproxy/haproxy.cfg) and
``python -m app serve`` replicas with the default weights on CPU, one torch thread each.

1. ``store``: in this process, one real prediction's document and compact result (default weights, a synthetic
   512x512 head CT) stored and read back the way the service does on a synchronous request (``put`` + ``stats``
   for the gauges, then ``get_result`` for a GET), memory vs Redis, median of ``--repeats`` (ms).
2. ``end_to_end``: one client, requests alternating between a memory-store replica and a Redis-store replica, the
   median upload-to-JSON latency of each and their difference (ms).
3. ``throughput``: ``--clients`` closed-loop clients for ``--duration`` s through HAProxy with one replica, then
   with two: completed predictions per second and their ratio.

    .venv/bin/python bench/cluster.py [--duration 25] [--clients 4] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import write_series  # noqa: E402
from bench.service import zip_folder  # noqa: E402

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


@contextmanager
def process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    with process([shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1", "--port",
                  str(port), "--save", "", "--appendonly", "no"]):
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"


def start_replica(stack: ExitStack, store_url: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    env = {"ICH_HOST": "127.0.0.1", "ICH_PORT": str(port), "ICH_DEVICE": "cpu", "ICH_STORE_URL": store_url,
           "OMP_NUM_THREADS": "1", "ICH_MAX_IN_FLIGHT": "2", "ICH_LOG_LEVEL": "WARNING",
           "ICH_PREPROCESS_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = stack.enter_context(process([sys.executable, "-m", "app", "serve", "--weights-dir",
                                        str(ROOT / "weights")], env))
    return f"127.0.0.1:{port}", proc


def balancer(stack: ExitStack, replicas: list[str]) -> str:
    port = free_port()
    env = {"ICH_PROXY_BIND": f"127.0.0.1:{port}", "ICH_REPLICA_A": replicas[0],
           "ICH_REPLICA_B": replicas[1] if len(replicas) > 1 else f"127.0.0.1:{free_port()}",
           "ICH_HEALTH_INTERVAL": "1s", "ICH_PROXY_ERRORS": str(HAPROXY_CFG.parent / "errors"),
           "ICH_PROXY_STATS": f"127.0.0.1:{free_port()}"}
    proc = stack.enter_context(process([shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f",
                                        str(HAPROXY_CFG)], env))
    _wait(f"http://127.0.0.1:{port}/health/ready", proc, 30)
    return f"http://127.0.0.1:{port}"


def bench_store(store_url: str, series_dir: Path, repeats: int) -> dict[str, Any]:
    from app.api.store_codec import encode_compact
    from app.api.store_memory import MemoryStore
    from app.api.store_redis import RedisStore
    from app.inference import Predictor
    from app.ingestion import load_series
    from app.result import build_document, compact_outputs

    predictor = Predictor.from_registry(ROOT / "weights", None, "cpu", compile="off")
    series = load_series([str(p) for p in sorted(series_dir.iterdir())])
    result = predictor.predict(series)
    compact = compact_outputs(predictor, series, result)
    document = build_document("x" * 32, predictor, series, result, {}, None)
    out: dict[str, Any] = {"compact_encoded_bytes": len(encode_compact(compact)),
                           "slices": series.slice_count}
    limits = {"max_items": 200, "max_bytes": 512 * 1024**2, "ttl_s": 3600.0}
    import redis

    server = redis.Redis.from_url(store_url)
    for name, store in (("memory", MemoryStore(**limits)), ("redis", RedisStore(store_url, **limits))):
        write_ms, write_cpu_ms, read_ms = [], [], []
        server.config_resetstat()
        for i in range(repeats):
            key = f"{i:032d}"
            t0, c0 = time.perf_counter(), time.process_time()
            store.put(key, document, compact=compact)
            store.stats()
            t1, c1 = time.perf_counter(), time.process_time()
            assert store.get_result(key) is not None
            t2 = time.perf_counter()
            write_ms.append((t1 - t0) * 1000)
            write_cpu_ms.append((c1 - c0) * 1000)
            read_ms.append((t2 - t1) * 1000)
        # CPU time (this process) and Redis's own time per command: figures that other load on the machine
        # does not inflate, unlike the wall clock
        commands = server.info("commandstats")
        server_ms = sum(v["usec"] for k, v in commands.items() if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_hset", "cmdstat_pexpire",
                                                            "cmdstat_multi", "cmdstat_exec")) / 1000
        out[name] = {"put_and_stats_ms_median": round(statistics.median(write_ms), 3),
                     "put_and_stats_ms_p95": round(sorted(write_ms)[int(0.95 * len(write_ms))], 3),
                     "put_and_stats_client_cpu_ms_median": round(statistics.median(write_cpu_ms), 3),
                     "redis_server_ms_per_request": round(server_ms / repeats, 3) if name == "redis" else 0.0,
                     "get_result_ms_median": round(statistics.median(read_ms), 3)}
    out["redis_added_ms_per_sync_request"] = round(
        out["redis"]["put_and_stats_ms_median"] - out["memory"]["put_and_stats_ms_median"], 3)
    out["redis_added_cpu_ms_per_sync_request"] = round(
        out["redis"]["put_and_stats_client_cpu_ms_median"] + out["redis"]["redis_server_ms_per_request"], 3)
    return out


def post(base: str, body: bytes) -> float:
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/v1/predictions", content=body, headers={"Content-Type": "application/zip"},
                   timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0


def bench_end_to_end(memory_base: str, redis_base: str, body: bytes, n: int) -> dict[str, Any]:
    post(memory_base, body), post(redis_base, body)  # first requests warm caches
    lat: dict[str, list[float]] = {"memory": [], "redis": []}
    for _ in range(n):
        lat["memory"].append(post(memory_base, body))
        lat["redis"].append(post(redis_base, body))
    med = {k: statistics.median(v) * 1000 for k, v in lat.items()}
    return {"requests_each": n, "memory_ms_median": round(med["memory"], 1),
            "redis_ms_median": round(med["redis"], 1), "difference_ms": round(med["redis"] - med["memory"], 1)}


def throughput(base: str, body: bytes, clients: int, duration: float) -> dict[str, Any]:
    done, refused = [0], [0]
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def loop() -> None:
        with httpx.Client(timeout=600) as client:
            while time.monotonic() < stop:
                r = client.post(f"{base}/v1/predictions", content=body, headers={"Content-Type": "application/zip"})
                with lock:
                    if r.status_code == 200:
                        done[0] += 1
                    else:
                        refused[0] += 1
                if r.status_code == 503:
                    time.sleep(float(r.headers.get("Retry-After", "1")) / 5)

    t0 = time.monotonic()
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {"completed": done[0], "refused_503": refused[0], "seconds": round(elapsed, 1),
            "per_s": round(done[0] / elapsed, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=25.0, help="seconds per throughput configuration")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--repeats", type=int, default=200, help="store operations timed in process")
    p.add_argument("--requests", type=int, default=6, help="end-to-end requests per store backend")
    args = p.parse_args(argv)
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp, redis_server() as store_url, ExitStack() as stack:
        series = write_series(Path(tmp) / "series", 24, None)
        body = zip_folder(series)
        report["store"] = bench_store(store_url, series, args.repeats)
        replicas = [start_replica(stack, store_url), start_replica(stack, store_url),
                    start_replica(stack, "memory://")]
        addresses = [address for address, _ in replicas]
        for address, proc in replicas:
            _wait(f"http://{address}/health/ready", proc, 300)
        report["end_to_end"] = bench_end_to_end(f"http://{addresses[2]}", f"http://{addresses[0]}", body,
                                                args.requests)
        one = balancer(stack, addresses[:1])
        two = balancer(stack, addresses[:2])
        throughput(one, body, 1, 1.0)
        report["throughput"] = {"clients": args.clients,
                                "one_replica": throughput(one, body, args.clients, args.duration),
                                "two_replicas": throughput(two, body, args.clients, args.duration)}
        t = report["throughput"]
        t["ratio"] = round(t["two_replicas"]["per_s"] / max(t["one_replica"]["per_s"], 1e-9), 2)
    report["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
