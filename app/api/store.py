"""Bounded in-memory result store with a time-to-live, limited by entry count and bytes.

An entry holds the result document (:class:`~app.result_schema.PredictionResponse`; no patient identifiers),
the :class:`~app.outputs.CompactResult` the files are rendered from (packed mask bits, geometry, pixel-free
source headers, key-slice HU), and the files rendered so far. Files are rendered on their first GET
(:meth:`ResultStore.get_file`), outside the store lock and at most once per entry, then cached; their bytes count
against ``max_bytes`` like everything else.

Thread-safe; expired entries are dropped lazily on every access, oldest entries evicted first when a limit would
be exceeded (the newest entry is always kept).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

JSON_NBYTES_BOUND = 4096  # charged per entry for the response JSON


class Renderable(Protocol):
    """What the store needs from a compact result (:class:`app.outputs.CompactResult`)."""

    @property
    def nbytes(self) -> int: ...

    def render(self, name: str) -> bytes: ...


@dataclass
class StoredResult:
    result: Any  # the result document (a PredictionResponse; any JSON-able value in unit tests)
    files: dict[str, bytes] = field(default_factory=dict)  # name -> bytes ("mask.nii.gz", "seg.dcm", ...)
    created: float = 0.0
    compact: Renderable | None = None
    render_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def nbytes(self) -> int:
        compact = self.compact.nbytes if self.compact is not None else 0
        return sum(len(b) for b in self.files.values()) + compact + JSON_NBYTES_BOUND


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
        with self._lock:
            self._expire(self._clock())
            return self._items.get(key)

    def get_file(self, key: str, name: str) -> bytes | None:
        """The file ``name`` of entry ``key``, rendered now if it was not yet; ``None`` when the entry is unknown
        or expired or cannot produce that file. Blocking (rendering is CPU work): call it off the event loop."""
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
