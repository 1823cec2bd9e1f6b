"""The shared store (``ICH_STORE_URL=redis://host:port/db``): Redis or Valkey through the ``redis`` client.

Layout under ``prefix`` (default ``ich:``), one standalone server (the scripts name entry keys they build, so not
Redis Cluster):

* ``r:{id}``: a hash with ``doc`` (the document, :func:`~app.api.store_codec.encode_document`), ``compact``
  (:func:`~app.api.store_codec.encode_compact`) and ``f:{name}`` per rendered file; it expires ``ttl_s`` after
  it was stored;
* ``index`` (sorted set id -> stored at, Unix s), ``sizes`` (hash id -> bytes) and ``bytes`` (their sum): the
  limits. Every write runs one Lua script that drops expired entries and then the oldest ones while more than
  ``max_items`` entries or ``max_bytes`` bytes are held (the newest entry always kept), atomically for every
  replica (a new entry: the script and the entry's ``HSET`` in one MULTI/EXEC transaction);
* ``job:{id}``: the :class:`~app.api.store.JobState` JSON, expiring after ``ttl_s``;
* ``replica:{id}``: present while that replica's heartbeat is fresh.

Any client error (refused, timed out, Redis out of memory) raises :class:`~app.api.store.StoreUnavailable`.
Each command waits at most ``timeout_s``; a broken connection is retried once (after a Redis restart).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.api.store import JobState, Renderable, StoreUnavailable
from app.api.store_codec import decode_compact, decode_document, encode_compact, encode_document

T = TypeVar("T")

_LIMITS = """
local prefix = ARGV[1]
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_items, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local keep = ARGV[6]
local function drop(k)
  local n = tonumber(redis.call('HGET', KEYS[2], k) or '0')
  redis.call('HDEL', KEYS[2], k)
  redis.call('ZREM', KEYS[1], k)
  redis.call('DECRBY', KEYS[3], n)
  redis.call('DEL', prefix .. 'r:' .. k)
end
local function enforce()
  for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)) do drop(k) end
  while true do
    local count = redis.call('ZCARD', KEYS[1])
    local held = tonumber(redis.call('GET', KEYS[3]) or '0')
    if count <= 1 or (count <= max_items and held <= max_bytes) then break end
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 1)
    if oldest[1] == keep then drop(oldest[2]) else drop(oldest[1]) end
  end
end
"""

# ARGV[7..]: id, nbytes. The entry's hash itself is written right after, in the same MULTI/EXEC transaction
# (large values are cheaper as plain HSET arguments than as script arguments).
_PUT = _LIMITS + """
local id = ARGV[7]
if redis.call('ZSCORE', KEYS[1], id) then drop(id) end
redis.call('ZADD', KEYS[1], now, id)
redis.call('HSET', KEYS[2], id, ARGV[8])
redis.call('INCRBY', KEYS[3], ARGV[8])
enforce()
return 1
"""

# ARGV[7..]: id, name, data
_ADD_FILE = _LIMITS + """
local id = ARGV[7]
local key = prefix .. 'r:' .. id
if redis.call('EXISTS', key) == 0 then return 0 end
if redis.call('HSETNX', key, 'f:' .. ARGV[8], ARGV[9]) == 1 then
  local n = string.len(ARGV[9])
  redis.call('HINCRBY', KEYS[2], id, n)
  redis.call('INCRBY', KEYS[3], n)
  enforce()
end
return 1
"""

_PURGE = _LIMITS + """
enforce()
return {redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""

N_RENDER_LOCKS = 64


class RedisStore:
    backend = "redis"

    def __init__(self, url: str, *, max_items: int, max_bytes: int, ttl_s: float, timeout_s: float = 1.0,
                 prefix: str = "ich:", clock: Callable[[], float] = time.time):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._clock = clock
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1), health_check_interval=30,
        )
        self._keys = [f"{prefix}index", f"{prefix}sizes", f"{prefix}bytes"]
        self._put = self._redis.register_script(_PUT)
        self._add_file = self._redis.register_script(_ADD_FILE)
        self._purge = self._redis.register_script(_PURGE)
        self._render_locks = [threading.Lock() for _ in range(N_RENDER_LOCKS)]

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis store: {type(exc).__name__}") from None

    def _limit_args(self, keep: str = "") -> list[Any]:
        return [self.prefix, repr(self._clock()), repr(self.ttl_s), self.max_items, self.max_bytes, keep]

    def _entry(self, key: str) -> str:
        return f"{self.prefix}r:{key}"

    # --- results -------------------------------------------------------------------------------------------
    def put(self, key: str, result: Any, files: dict[str, bytes] | None = None, *,
            compact: Renderable | None = None) -> None:
        doc = encode_document(result)
        packed = encode_compact(compact) if compact is not None else b""  # type: ignore[arg-type]
        files = dict(files or {})
        nbytes = len(doc) + len(packed) + sum(len(b) for b in files.values())
        fields = {"doc": doc, **({"compact": packed} if packed else {}),
                  **{f"f:{name}": data for name, data in files.items()}}
        entry = self._entry(key)

        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            self._put(keys=self._keys, args=[*self._limit_args(keep=key), key, nbytes], client=pipe)
            pipe.hset(entry, mapping=fields)
            pipe.pexpire(entry, int(self.ttl_s * 1000) + 1)
            pipe.execute()

        self._call(write)

    def get_result(self, key: str) -> Any | None:
        data = self._call(lambda: self._redis.hget(self._entry(key), "doc"))
        return None if data is None else decode_document(data)

    def get_file(self, key: str, name: str) -> bytes | None:
        """The file, from the store or rendered here from the stored compact form (once per replica at a time;
        two replicas may both render a file on its first GET, the first one stored wins)."""
        from app.outputs.compact import OutputUnavailable

        entry = self._entry(key)
        data = self._call(lambda: self._redis.hget(entry, f"f:{name}"))
        if data is not None:
            return data
        with self._render_locks[hash((key, name)) % N_RENDER_LOCKS]:
            data, packed = self._call(lambda: self._redis.hmget(entry, [f"f:{name}", "compact"]))
            if data is not None or packed is None:
                return data
            compact = decode_compact(packed)
            try:
                data = compact.render(name)
            except OutputUnavailable:
                raise
            except KeyError:
                return None
            rendered = data
            self._call(lambda: self._add_file(keys=self._keys, args=[*self._limit_args(keep=key), key, name,
                                                                      rendered]))
        return data

    def stats(self) -> dict[str, int]:
        items, held = self._call(lambda: self._purge(keys=self._keys, args=self._limit_args()))
        return {"items": int(items), "bytes": int(held)}

    # --- jobs and heartbeats --------------------------------------------------------------------------------
    def put_job(self, state: JobState) -> None:
        self._call(lambda: self._redis.set(f"{self.prefix}job:{state.id}", state.to_json(),
                                           px=int(self.ttl_s * 1000)))

    def get_job(self, job_id: str) -> JobState | None:
        data = self._call(lambda: self._redis.get(f"{self.prefix}job:{job_id}"))
        return None if data is None else JobState.from_json(data)

    def beat(self, replica: str, timeout_s: float) -> None:
        self._call(lambda: self._redis.set(f"{self.prefix}replica:{replica}", b"1", px=int(timeout_s * 1000)))

    def replica_alive(self, replica: str) -> bool:
        return bool(self._call(lambda: self._redis.exists(f"{self.prefix}replica:{replica}")))

    def ping(self) -> None:
        self._call(self._redis.ping)

    def close(self) -> None:
        self._redis.close()
