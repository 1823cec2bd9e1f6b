"""Real components of a multi-replica deployment, started on loopback by the tests: ``redis-server`` and
``haproxy`` (Debian packages in scripts/system-packages.txt). The HAProxy configuration is the one in
deploy/haproxy/haproxy.cfg, with the replicas' addresses in environment variables; its error files answer 503
with ``Retry-After`` when no replica can."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from system_components import free_port, require_executable

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


@dataclass
class RedisProcess:
    """``redis-server`` on 127.0.0.1:``port`` without persistence; :meth:`stop` and :meth:`start` it again on
    the same port (an outage)."""

    executable: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        import redis

        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - kept open by the process
        self.process = subprocess.Popen(
            [str(self.executable), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def start_redis(tmp: Path) -> RedisProcess:
    executable = require_executable("redis-server", "redis-server", "/usr/bin/redis-server")
    return RedisProcess(executable, tmp).start()


@dataclass
class HAProxyProcess:
    port: int
    stats_port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server_states(self, backend: str = "predictions") -> dict[str, str]:
        """Health state of each replica in ``backend`` (``predictions``: new predictions, checked on
        /health/ready; ``reads``: everything else, checked on /health/reads) as HAProxy sees it (``UP``,
        ``DOWN``, ...), from its stats CSV."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = [line.split(",") for line in text.splitlines() if line.startswith(f"{backend},")]
        return {row[1]: row[17] for row in rows if row[1] not in ("BACKEND", "FRONTEND")}

    def wait_for_states(self, wanted: dict[str, str], timeout: float = 15.0, backend: str = "predictions") -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.server_states(backend)
            if all(states.get(k, "").startswith(v) for k, v in wanted.items()):
                return
            time.sleep(0.1)
        raise AssertionError(f"replica states in {backend}: {states}, wanted {wanted}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)  # soft stop
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_haproxy(tmp: Path, replicas: list[str], *, check_interval_ms: int = 300,
                  timeout: float = 30.0) -> HAProxyProcess:
    """HAProxy on a free port balancing ``replicas`` (``host:port``, two) with deploy/haproxy/haproxy.cfg;
    waits until both serve through it and are up in both backends."""
    executable = require_executable("haproxy", "haproxy", "/usr/sbin/haproxy")
    port, stats_port = free_port(), free_port()
    env = {**os.environ, "ICH_PROXY_BIND": f"127.0.0.1:{port}", "ICH_REPLICA_A": replicas[0],
           "ICH_REPLICA_B": replicas[1], "ICH_HEALTH_INTERVAL": f"{check_interval_ms}ms",
           "ICH_PROXY_ERRORS": str(HAPROXY_CFG.parent / "errors"), "ICH_PROXY_STATS": f"127.0.0.1:{stats_port}"}
    subprocess.run([str(executable), "-c", "-f", str(HAPROXY_CFG)], env=env, check=True, capture_output=True)
    log_path = tmp / f"haproxy-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(executable), "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    proxy = HAProxyProcess(port, stats_port, proc, log_path)
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline and len(seen) < len(replicas):
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {log_path.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{proxy.base_url}/health/ready", timeout=2)
            if r.status_code == 200:
                seen.add(r.headers.get("x-served-by", ""))
        time.sleep(0.1)
    if len(seen) < len(replicas):
        proxy.stop()
        raise RuntimeError(f"haproxy did not route to every replica within {timeout} s (saw {sorted(seen)})")
    for backend in ("predictions", "reads"):
        proxy.wait_for_states(dict.fromkeys("ab", "UP"), timeout=timeout, backend=backend)
    return proxy
