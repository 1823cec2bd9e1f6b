"""Load and overload through the real endpoint with a bounded async httpx generator.

Level 1: the planned concurrency (= ``ICH_MAX_IN_FLIGHT`` = 2) -> every request 200. Level 2: twice the queue
capacity, with a slowed model (0.5 s per forward pass, injected) so the service is really saturated -> only
200 and 503 + Retry-After, every request answered, readiness 503 while saturated and 200 afterwards.
Latency percentiles are printed as JSON. Budget: about 30 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np

from .harness import FaultServer, check_answer


async def _load(base_url: str, body: bytes, concurrency: int, total: int, deadline_s: float,
                probe_ready: bool = False) -> dict:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    ready_codes: list[int] = []
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency + 2)) as client:
        async def one() -> None:
            async with sem:
                t0 = time.perf_counter()
                r = await client.post("/v1/predictions", content=body, headers={"Content-Type": "application/zip"})
                latencies.append(time.perf_counter() - t0)
                label = check_answer(r, allow_503=True)
                outcomes[label] = outcomes.get(label, 0) + 1

        async def prober() -> None:
            while not stop.is_set():
                ready_codes.append((await client.get("/health/ready", timeout=5)).status_code)
                await asyncio.sleep(0.1)

        probe = asyncio.create_task(prober()) if probe_ready else None
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(total))), timeout=deadline_s)
        stop.set()
        if probe is not None:
            await probe
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": total, "outcomes": outcomes,
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "max_ms": round(float(lat.max()), 1),
            "ready_codes": sorted(set(ready_codes))}


def _zip(paths: list[Path]) -> bytes:
    from service_fixtures import zip_bytes

    return zip_bytes(paths)


def test_planned_concurrency_all_succeed(server: FaultServer, canary_series: list[Path]) -> None:
    stats = asyncio.run(_load(server.base_url, _zip(canary_series), concurrency=2, total=6, deadline_s=90))
    print(json.dumps({"load_level": "planned", **stats}))
    assert stats["outcomes"] == {"200": 6}


def test_overload_sheds_and_recovers(server: FaultServer, canary_series: list[Path]) -> None:
    server.set_faults(delay_s=0.5)
    try:
        stats = asyncio.run(_load(server.base_url, _zip(canary_series), concurrency=4, total=16, deadline_s=120,
                                  probe_ready=True))
    finally:
        server.set_faults()
    print(json.dumps({"load_level": "2x_capacity", **stats}))
    assert set(stats["outcomes"]) <= {"200", "503:overloaded"} and sum(stats["outcomes"].values()) == 16
    assert stats["outcomes"].get("200", 0) >= 2 and stats["outcomes"].get("503:overloaded", 0) >= 1
    assert server.ready_status() == 200  # recovered


def test_readiness_reports_saturation(server: FaultServer, canary_series: list[Path]) -> None:
    """Regression: readiness reports saturation (/health/ready stayed 200 while every admission slot was taken."""
    server.set_faults(delay_s=1.5)
    try:
        stats = asyncio.run(_load(server.base_url, _zip(canary_series), concurrency=2, total=2, deadline_s=60,
                                  probe_ready=True))
    finally:
        server.set_faults()
    assert stats["outcomes"] == {"200": 2}
    assert server.ready_status() == 200
    assert 503 in stats["ready_codes"], "readiness stayed 200 while every slot was taken"
