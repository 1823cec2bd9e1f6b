"""Seeded mutation fuzzing through the real HTTP endpoint (``POST /v1/predictions``).

Every case must be answered -- 200 with a well-formed result, or problem+json with a documented 4xx code --
never a 5xx and never a hang; the server must stay live during and ready after the campaign.
Budget: at least MIN_CASES cases always run (so a slow machine tests as much as the contract promises); after
that, more cases until MAX_CASES or 50 s (about 0.05-1.5 s per case on 2 cores; long runs:
bench/fuzz_service.py, see docs/reliability.md).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import httpx

from .harness import FaultServer, check_answer
from .mutators import MUTATORS, make_case

SEED = 20240601
MAX_CASES = 15 * len(MUTATORS)
TIME_BUDGET_S = 50.0
MIN_CASES = 4 * len(MUTATORS)


def test_mutation_fuzz(server: FaultServer, canary_series: list[Path]) -> None:
    files = [p.read_bytes() for p in canary_series]
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    t0 = time.monotonic()
    n = 0
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        for n in range(MAX_CASES):  # noqa: B007 - n is reported below
            if n >= MIN_CASES and time.monotonic() - t0 > TIME_BUDGET_S:
                break
            case = make_case(SEED, n, files)
            try:
                r = client.post("/v1/predictions", **case.request_kwargs())
                outcomes[check_answer(r)] += 1
            except (AssertionError, httpx.HTTPError) as exc:
                outcomes[f"error:{type(exc).__name__}"] += 1
                failures.append(f"{case.name}: {exc}"[:600])
        else:
            n = MAX_CASES
        assert client.get("/health/ready").status_code == 200
    print(json.dumps({"fuzz_cases": n, "seconds": round(time.monotonic() - t0, 1),
                      "outcomes": dict(outcomes.most_common())}))
    assert not failures, "\n".join(failures[:20])
    assert n >= MIN_CASES, f"only {n} cases ran"
    assert sum(v for k, v in outcomes.items() if k != "200") > 0  # the mutations really hit refusals
