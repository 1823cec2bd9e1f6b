"""The embedded store (``ICH_STORE_URL=memory://``, the default): bounded, in this process's memory.

Files are rendered on their first GET (:meth:`MemoryStore.get_file`), outside the store lock and at most once per
entry, then cached; their bytes count against ``max_bytes`` like everything else. Thread-safe; expired entries are
dropped lazily on every access, oldest entries evicted first when a limit would be exceeded (the newest entry is
always kept). Job states and replica heartbeats live here too, so the asynchronous flow works on one replica
without Redis (other replicas cannot see them: use the Redis store behind a balancer).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from app.api.store import JobState, Renderable, StoredResult


class MemoryStore:
    backend = "memory"

    def __init__(self, max_items: int, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[float, JobState]] = {}  # id -> (expiry on the clock, state)
        self._beats: dict[str, float] = {}  # replica -> alive until (clock)

    # --- results -------------------------------------------------------------------------------------------
    def _drop(self, key: str) -> None:
        entry = self._items.pop(key)
        self._bytes -= entry.nbytes

    def _expire(self, now: float) -> None:
        while self._items:
            key, entry = next(iter(self._items.items()))
            if now - entry.created < self.ttl_s:
                break
            self._drop(key)
        for job_id in [j for j, (until, _) in self._jobs.items() if until <= now]:
            del self._jobs[job_id]

    def _enforce_limits(self) -> None:
        while len(self._items) > 1 and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
            self._drop(next(iter(self._items)))

    def put(self, key: str, result: Any, files: dict[str, bytes] | None = None, *,
            compact: Renderable | None = None) -> None:
        """Store ``result`` with already rendered ``files`` and/or the ``compact`` form to render them from."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if key in self._items:
                self._drop(key)
            entry = StoredResult(result=result, files=dict(files or {}), created=now, compact=compact)
            self._items[key] = entry
            self._bytes += entry.nbytes
            self._enforce_limits()

    def get(self, key: str) -> StoredResult | None:
        """The whole entry (document, compact form, files so far); ``None`` when unknown or expired."""
        with self._lock:
            self._expire(self._clock())
            return self._items.get(key)

    def get_result(self, key: str) -> Any | None:
        entry = self.get(key)
        return None if entry is None else entry.result

    def get_file(self, key: str, name: str) -> bytes | None:
        """The file ``name`` of entry ``key``, rendered now if it was not yet; ``None`` when the entry is unknown
        or expired or cannot produce that file (an ``OutputUnavailable`` is raised as such). Blocking (rendering
        is CPU work): call it off the event loop."""
        from app.outputs.compact import OutputUnavailable

        entry = self.get(key)
        if entry is None:
            return None
        with self._lock:
            data = entry.files.get(name)
        if data is not None or entry.compact is None:
            return data
        with entry.render_lock:  # concurrent GETs of one entry render once
            with self._lock:
                data = entry.files.get(name)
            if data is not None:
                return data
            try:
                data = entry.compact.render(name)
            except OutputUnavailable:
                raise
            except KeyError:
                return None
            with self._lock:
                if self._items.get(key) is entry:  # still stored: cache and charge the bytes
                    entry.files[name] = data
                    self._bytes += len(data)
                    self._enforce_limits()
        return data

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._expire(self._clock())
            return {"items": len(self._items), "bytes": self._bytes}

    # --- jobs and heartbeats --------------------------------------------------------------------------------
    def put_job(self, state: JobState) -> None:
        with self._lock:
            self._jobs[state.id] = (self._clock() + self.ttl_s, state)

    def get_job(self, job_id: str) -> JobState | None:
        with self._lock:
            self._expire(self._clock())
            held = self._jobs.get(job_id)
            return None if held is None else held[1]

    def beat(self, replica: str, timeout_s: float) -> None:
        with self._lock:
            self._beats[replica] = self._clock() + timeout_s

    def replica_alive(self, replica: str) -> bool:
        with self._lock:
            return self._beats.get(replica, float("-inf")) > self._clock()

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
