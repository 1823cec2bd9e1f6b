"""Bounded in-memory result store with a time-to-live, limited by entry count and bytes.

Entries hold the response JSON (no patient identifiers) and the rendered files (NIfTI, SEG, PNG).
Thread-safe; expired entries are dropped lazily on every access, oldest entries evicted first when a limit
would be exceeded (the newest entry is always kept).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StoredResult:
    result: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # name -> bytes ("mask.nii.gz", "seg.dcm", ...)
    created: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.files.values()) + 4096  # + a bound for the JSON


class ResultStore:
    def __init__(self, max_items: int, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _drop(self, key: str) -> None:
        entry = self._items.pop(key)
        self._bytes -= entry.nbytes

    def _expire(self, now: float) -> None:
        while self._items:
            key, entry = next(iter(self._items.items()))
            if now - entry.created < self.ttl_s:
                break
            self._drop(key)

    def put(self, key: str, result: dict[str, Any], files: dict[str, bytes]) -> None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            if key in self._items:
                self._drop(key)
            entry = StoredResult(result=result, files=dict(files), created=now)
            self._items[key] = entry
            self._bytes += entry.nbytes
            while len(self._items) > 1 and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
                self._drop(next(iter(self._items)))

    def get(self, key: str) -> StoredResult | None:
        with self._lock:
            self._expire(self._clock())
            return self._items.get(key)

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._expire(self._clock())
            return {"items": len(self._items), "bytes": self._bytes}
