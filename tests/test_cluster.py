"""Two replicas behind a real balancer on one shared store, all real processes on loopback started here:
``python -m app serve`` twice (default weights, CPU, one torch thread each), ``redis-server`` and ``haproxy``
with deploy/haproxy/haproxy.cfg (health check on /health/ready).

* a synchronous prediction posted through the balancer is read back, files included, from the other replica;
* an asynchronous one (``Prefer: respond-async``) answers 202 + Location + Retry-After and is polled to its
  result on the other replica;
* a replica with every slot taken fails readiness and gets no new predictions until a slot frees, but still
  answers reads (results, polling: the balancer routes them by /health/reads);
* Redis stopped: predictions and reads answer 503 ``store_unavailable`` with Retry-After (never 500), readiness
  is false on both replicas and the balancer answers 503 + Retry-After; Redis back: service back;
* one replica killed under load (last, it ends the cluster): clients see only 200, 202 or 503 with Retry-After,
  every answered result can still be read, and its unfinished jobs fail as 503 ``job_lost`` after the
  heartbeat timeout.

Budget: about 60-70 s on 2 CPU cores (start-up of two replicas in parallel, ~20-30 small predictions).
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cluster_components import HAProxyProcess, RedisProcess, start_haproxy, start_redis
from service_fixtures import ServerProcess, start_server, write_phantom_series, zip_bytes

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = httpx.Timeout(60.0)
MAX_IN_FLIGHT = 2
HEARTBEAT_TIMEOUT_S = 2.0
HEARTBEAT_INTERVAL_S = 0.5


@dataclass
class Cluster:
    redis: RedisProcess
    a: ServerProcess
    b: ServerProcess
    proxy: HAProxyProcess

    def replica(self, name: str) -> ServerProcess:
        return {"a": self.a, "b": self.b}[name]

    def other(self, name: str) -> ServerProcess:
        return {"a": self.b, "b": self.a}[name]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    tmp = tmp_path_factory.mktemp("cluster")
    redis = start_redis(tmp)
    env = {"ICH_STORE_URL": redis.url, "ICH_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT), "ICH_RETRY_AFTER_S": "1",
           "ICH_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S), "ICH_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
           "ICH_STORE_TIMEOUT_S": "0.5", "ICH_REQUEST_TIMEOUT_S": "60", "ICH_SHUTDOWN_GRACE_S": "5"}
    dirs = [tmp / "a", tmp / "b"]
    for d in dirs:
        d.mkdir()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both replicas start at once
        a, b = pool.map(lambda d: start_server(d, env={**env, "ICH_UPLOAD_DIR": str(d)}, ready_timeout=180,
                                               weights_dir=ROOT / "weights"), dirs)
    proxy = start_haproxy(tmp, [a.base_url.removeprefix("http://"), b.base_url.removeprefix("http://")])
    yield Cluster(redis, a, b, proxy)
    proxy.stop()
    for server in (a, b):
        server.stop()
    redis.stop()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return zip_bytes(write_phantom_series(tmp_path_factory.mktemp("study") / "s", n_slices=16, size=64, seed=2))


def _post(base: str, body: bytes, *, respond_async: bool = False) -> httpx.Response:
    headers = {"Content-Type": "application/zip"}
    if respond_async:
        headers["Prefer"] = "respond-async"
    return httpx.post(f"{base}/v1/predictions", content=body, headers=headers, timeout=TIMEOUT)


def _poll(base: str, location: str, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(base + location, timeout=TIMEOUT)
        balancer_busy = _is_retryable_503(r) and r.json()["code"] == "upstream_unavailable"  # retry, as told
        if not (r.status_code == 202 or balancer_busy) or time.monotonic() > deadline:
            return r
        if balancer_busy:
            time.sleep(float(r.headers["Retry-After"]))
            continue
        assert r.json()["status"] in ("queued", "running") and int(r.headers["Retry-After"]) >= 1
        time.sleep(0.2)


def _is_retryable_503(r: httpx.Response) -> bool:
    return (r.status_code == 503 and int(r.headers.get("Retry-After", "0")) >= 1
            and r.headers["content-type"].startswith("application/problem+json"))


def test_result_and_files_from_the_other_replica(cluster: Cluster, study: bytes) -> None:
    r = _post(cluster.proxy.base_url, study)
    assert r.status_code == 200, r.text
    served_by = r.headers["x-served-by"]
    body = r.json()
    other = cluster.other(served_by).base_url
    again = httpx.get(other + r.headers["location"], timeout=TIMEOUT)
    assert again.status_code == 200 and again.json() == body
    for link, magic in (("mask_nifti", b"\x1f\x8b"), ("seg_dicom", b"\0" * 128 + b"DICM"),
                        ("overlay_png", b"\x89PNG")):
        f = httpx.get(other + body["links"][link], timeout=TIMEOUT)
        assert f.status_code == 200 and f.content.startswith(magic), (link, f.status_code)
        through = httpx.get(cluster.proxy.base_url + body["links"][link], timeout=TIMEOUT)
        assert through.status_code == 200 and through.content == f.content  # rendered once, then shared
    missing = httpx.get(f"{other}/v1/predictions/{'0' * 32}", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_async_prediction_polled_on_the_other_replica(cluster: Cluster, study: bytes) -> None:
    sync = _post(cluster.proxy.base_url, study).json()
    r = _post(cluster.proxy.base_url, study, respond_async=True)
    assert r.status_code == 202, r.text
    assert r.headers["preference-applied"] == "respond-async" and int(r.headers["retry-after"]) >= 1
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == job["links"]["self"] == f"/v1/predictions/{job['id']}"
    other = cluster.other(r.headers["x-served-by"]).base_url
    done = _poll(other, r.headers["location"])
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["id"] == job["id"] and result["links"]["self"] == job["links"]["self"]
    assert result["expansion"] == sync["expansion"] and result["haematoma"] == sync["haematoma"]


def test_async_refusal_is_the_failure_problem(cluster: Cluster) -> None:
    bad = {"content": b"PK\x03\x04 not a zip at all", "timeout": TIMEOUT}
    sync = httpx.post(f"{cluster.proxy.base_url}/v1/predictions", headers={"Content-Type": "application/zip"}, **bad)
    r = httpx.post(f"{cluster.proxy.base_url}/v1/predictions",
                   headers={"Content-Type": "application/zip", "Prefer": "respond-async"}, **bad)
    assert r.status_code == 202, r.text
    failed = _poll(cluster.proxy.base_url, r.headers["location"])
    assert 400 <= sync.status_code < 500 and failed.status_code == sync.status_code
    assert failed.headers["content-type"].startswith("application/problem+json")
    assert failed.json()["code"] == sync.json()["code"]
    assert failed.json()["instance"] == r.headers["location"]


def _stall_upload(port: int) -> socket.socket:
    """A prediction upload that sends its headers and a little of its body, then nothing: it holds a slot."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/zip\r\n"
                 b"Content-Length: 1000000\r\n\r\nPK\x03\x04" + b"\0" * 1000)
    return sock


def test_saturated_replica_taken_out_of_rotation(cluster: Cluster, study: bytes) -> None:
    """New predictions avoid the saturated replica; reads (results, polling) still reach it."""
    known = _post(cluster.proxy.base_url, study).json()["id"]
    port = int(cluster.a.base_url.rsplit(":", 1)[1])
    stalled = [_stall_upload(port) for _ in range(MAX_IN_FLIGHT)]
    try:
        cluster.proxy.wait_for_states({"a": "DOWN", "b": "UP"})
        assert cluster.proxy.server_states("reads") == {"a": "UP", "b": "UP"}
        ready = httpx.get(f"{cluster.a.base_url}/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "saturated"
        answers = [_post(cluster.proxy.base_url, study) for _ in range(2)]
        assert [(r.status_code, r.headers["x-served-by"]) for r in answers] == [(200, "b"), (200, "b")]
        reads = [httpx.get(f"{cluster.proxy.base_url}/v1/predictions/{known}", timeout=TIMEOUT) for _ in range(4)]
        assert all(r.status_code == 200 and r.json()["id"] == known for r in reads), [r.text for r in reads]
        assert {r.headers["x-served-by"] for r in reads} == {"a", "b"}  # the saturated replica answers reads
    finally:
        for sock in stalled:
            sock.close()
    cluster.proxy.wait_for_states({"a": "UP", "b": "UP"})


def test_redis_outage_answers_503_and_readiness_false(cluster: Cluster, study: bytes) -> None:
    known = _post(cluster.proxy.base_url, study).json()["id"]
    cluster.redis.stop()
    try:
        for server in (cluster.a, cluster.b):
            deadline = time.monotonic() + 10
            while (ready := httpx.get(f"{server.base_url}/health/ready", timeout=5)).status_code == 200:
                assert time.monotonic() < deadline, "readiness stayed true without the store"
                time.sleep(0.1)
            assert ready.status_code == 503 and ready.json()["status"] == "store_unavailable"
        post = _post(cluster.a.base_url, study)
        get = httpx.get(f"{cluster.b.base_url}/v1/predictions/{known}", timeout=TIMEOUT)
        for r in (post, get):
            assert _is_retryable_503(r) and r.json()["code"] == "store_unavailable", r.text
        cluster.proxy.wait_for_states({"a": "DOWN", "b": "DOWN"})
        cluster.proxy.wait_for_states({"a": "DOWN", "b": "DOWN"}, backend="reads")
        through = _post(cluster.proxy.base_url, study)
        read = httpx.get(f"{cluster.proxy.base_url}/v1/predictions/{known}", timeout=TIMEOUT)
        for r in (through, read):
            assert _is_retryable_503(r) and r.json()["code"] == "upstream_unavailable", r.text
        unhandled = [line for line in httpx.get(f"{cluster.a.base_url}/metrics").text.splitlines()
                     if line.startswith("ich_unhandled_errors_total{")]
        assert all('error_type="ClientDisconnect"' in line for line in unhandled), unhandled  # the stalled uploads
    finally:
        cluster.redis.start()
    cluster.proxy.wait_for_states({"a": "UP", "b": "UP"})
    cluster.proxy.wait_for_states({"a": "UP", "b": "UP"}, backend="reads")
    assert _post(cluster.proxy.base_url, study).status_code == 200


def test_replica_killed_under_load(cluster: Cluster, study: bytes) -> None:
    """Last test of the module: replica a stays dead."""
    answers: list[tuple[bool, httpx.Response]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            respond_async = (i + k) % 2 == 1
            try:
                r = _post(cluster.proxy.base_url, study, respond_async=respond_async)
            except httpx.HTTPError as exc:  # the balancer must always answer
                r = httpx.Response(599, text=repr(exc))
            with lock:
                answers.append((respond_async, r))
            if r.status_code == 503:  # as told by Retry-After (shortened: the test has a budget)
                time.sleep(min(float(r.headers.get("Retry-After", "1")), 1.0) / 2)
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len([a for a in answers if a[1].headers.get("x-served-by") == "a"]) < 2:
        assert time.monotonic() < deadline, "replica a got no work"
        time.sleep(0.05)
    while (doomed := _post(cluster.a.base_url, study, respond_async=True)).status_code == 503:  # a is busy
        assert _is_retryable_503(doomed) and time.monotonic() < deadline, doomed.text
        time.sleep(0.1)
    assert doomed.status_code == 202, doomed.text  # still running when a dies, just below
    cluster.a.process.kill()
    killed_at, killed_time = len(answers), time.monotonic()
    def served_after_kill() -> int:
        return sum(r.status_code in (200, 202) for _, r in answers[killed_at:])

    while served_after_kill() < 2 and time.monotonic() < killed_time + 40:  # b goes on serving
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(60)
    statuses = [r.status_code for _, r in answers]
    assert set(statuses) <= {200, 202, 503}, statuses
    assert all(_is_retryable_503(r) for _, r in answers if r.status_code == 503)
    assert served_after_kill() >= 2, statuses
    for respond_async, r in answers:
        if r.status_code == 200:  # an answered result is never lost
            again = httpx.get(cluster.proxy.base_url + r.headers["location"], timeout=TIMEOUT)
            assert again.status_code == 200 and again.json() == r.json(), again.text
        elif r.status_code == 202:
            assert respond_async
            final = _poll(cluster.proxy.base_url, r.headers["location"], timeout=HEARTBEAT_TIMEOUT_S + 30)
            if final.status_code == 503:
                assert _is_retryable_503(final) and final.json()["code"] == "job_lost"
                assert r.headers["x-served-by"] == "a"  # only the dead replica's jobs are lost
            else:
                assert final.status_code == 200, final.text
    assert statuses.count(200) + statuses.count(202) >= 4, statuses
    final = _poll(cluster.proxy.base_url, doomed.headers["location"], timeout=HEARTBEAT_TIMEOUT_S + 30)
    assert _is_retryable_503(final) and final.json()["code"] == "job_lost", final.text
    # failed only once the heartbeat timed out: the dead replica's last beat came at most one interval before the kill
    assert time.monotonic() - killed_time >= HEARTBEAT_TIMEOUT_S - HEARTBEAT_INTERVAL_S
