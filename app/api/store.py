"""The result store: one :class:`Store` protocol, two backends chosen by ``ICH_STORE_URL`` (:func:`open_store`).

* ``memory://`` (default): :class:`~app.api.store_memory.MemoryStore`, embedded in the process, as before;
* ``redis://host:port/db`` (Redis or Valkey, ``rediss://`` for TLS): :class:`~app.api.store_redis.RedisStore`,
  shared by every replica, so a ``GET`` that the balancer sends to another replica finds the result.

A store holds, per prediction id: the result document (a :class:`~app.result_schema.PredictionResponse`, or any
other pydantic model or JSON-able value, e.g. a later comparison), the compact form the files are rendered from
(:class:`~app.outputs.CompactResult`) and the files rendered so far; and, per asynchronous job, its
:class:`JobState`, plus the heartbeat of every live replica. Entries live ``ttl_s`` seconds; the oldest are
evicted when ``max_items`` or ``max_bytes`` (document bound + compact + files) would be exceeded, the newest
entry always kept.

A backend that cannot be reached raises :class:`StoreUnavailable`; the service answers 503 ``store_unavailable``
(with ``Retry-After``) and readiness reports it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from app.api.settings import ServiceSettings

JSON_NBYTES_BOUND = 4096  # charged per entry for the response JSON

JobStatus = Literal["queued", "running", "done", "failed"]


class StoreUnavailable(RuntimeError):
    """The store backend did not answer (connection refused, timeout, out of memory). The message names the
    backend and the error type only, never a key's value."""


class Renderable(Protocol):
    """What the store needs from a compact result (:class:`app.outputs.CompactResult`)."""

    @property
    def nbytes(self) -> int: ...

    def render(self, name: str) -> bytes: ...


@dataclass
class StoredResult:
    """One entry of the memory store (the Redis store keeps the same parts as separate fields)."""

    result: Any  # the result document (a PredictionResponse; any JSON-able value in unit tests)
    files: dict[str, bytes] = field(default_factory=dict)  # name -> bytes ("mask.nii.gz", "seg.dcm", ...)
    created: float = 0.0
    compact: Renderable | None = None
    render_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def nbytes(self) -> int:
        compact = self.compact.nbytes if self.compact is not None else 0
        return sum(len(b) for b in self.files.values()) + compact + JSON_NBYTES_BOUND


@dataclass
class JobState:
    """The state of one asynchronous prediction, shared through the store.

    ``replica``: the id of the replica running it (its heartbeat tells whether it is alive); ``created`` and
    ``updated``: Unix time, s; ``problem``: for ``failed``, the problem+json body of the failure (``status``,
    ``code``, ``title``, ``detail``) and ``headers`` to answer with."""

    id: str
    status: JobStatus
    replica: str
    created: float
    updated: float
    problem: dict[str, Any] | None = None
    headers: dict[str, str] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> JobState:
        return cls(**json.loads(text))


class Store(Protocol):
    """What the service (and any other feature that keeps results by id) needs from a store. Blocking calls
    (network or rendering): call them off the event loop. Every method may raise :class:`StoreUnavailable`."""

    backend: str  # "memory" or "redis"

    def put(self, key: str, result: Any, files: dict[str, bytes] | None = None, *,
            compact: Renderable | None = None) -> None:
        """Store document ``result`` under ``key`` with already rendered ``files`` and/or the ``compact`` form to
        render them from; replaces an entry of the same key."""

    def get_result(self, key: str) -> Any | None:
        """The document stored under ``key``; ``None`` when unknown or expired."""

    def get_file(self, key: str, name: str) -> bytes | None:
        """File ``name`` of entry ``key``, rendered from the compact form on first request and cached (its bytes
        count against ``max_bytes``); ``None`` when the entry is unknown or expired or has no such file. Raises
        :class:`~app.outputs.compact.OutputUnavailable` for a file this result cannot produce."""

    def put_job(self, state: JobState) -> None:
        """Create or replace the state of job ``state.id`` (kept ``ttl_s``)."""

    def get_job(self, job_id: str) -> JobState | None: ...

    def beat(self, replica: str, timeout_s: float) -> None:
        """Replica ``replica`` is alive for the next ``timeout_s`` seconds."""

    def replica_alive(self, replica: str) -> bool: ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers now."""

    def stats(self) -> dict[str, int]:
        """``items`` (results held) and ``bytes`` (charged bytes)."""

    def close(self) -> None: ...


def open_store(settings: ServiceSettings, *, namespace: str = "", max_bytes: int | None = None) -> Store:
    """The backend named by ``settings.store_url`` with the result limits of ``settings`` (``max_bytes``
    overrides the byte limit); ``namespace`` keeps a second store of the same backend apart from the results."""
    url = settings.store_url.strip()
    limits = {"max_items": settings.result_max_items,
              "max_bytes": settings.result_max_bytes if max_bytes is None else max_bytes,
              "ttl_s": settings.result_ttl_s}
    if url in ("", "memory", "memory://"):
        from app.api.store_memory import MemoryStore

        return MemoryStore(**limits)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from app.api.store_redis import RedisStore

        prefix = settings.store_prefix + (f"{namespace}:" if namespace else "")
        return RedisStore(url, timeout_s=settings.store_timeout_s, prefix=prefix, **limits)
    raise ValueError(f"ICH_STORE_URL must be memory:// or redis://host:port/db, not {url.split(':', 1)[0]}://...")


def __getattr__(name: str) -> Any:
    if name == "ResultStore":  # the name of the memory store before there were two backends
        from app.api.store_memory import MemoryStore

        return MemoryStore
    raise AttributeError(name)
