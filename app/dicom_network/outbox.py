"""On-disk outbox of result objects for each destination, sent by one thread per destination with retries.

Layout under ``<work>/outbox/<destination key>/``: one folder per job (``<ns timestamp>-<tag>``) holding the
Part-10 files and ``job.json`` (``attempts``, ``next_attempt``: Unix seconds). A job is written under a temporary
name and renamed into place, so a restart finds only complete jobs and sends them (nothing is lost, at worst a
job is sent twice; the result UIDs are stable, so the PACS replaces rather than duplicates). A failed send is
logged (destination label, attempt, reason; no identifiers), counted, and retried after
``base_s * 2**(attempts - 1)`` seconds, at most ``max_s``; after ``max_attempts`` the job moves to
``failed/`` under the destination's folder and stays there for an operator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.dicom_network.destinations import Destination, SendError

log = logging.getLogger("app.dicom_network.outbox")


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 2.0
    max_s: float = 300.0
    max_attempts: int = 20

    def delay_s(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        return min(self.max_s, self.base_s * 2 ** max(0, attempts - 1))


class DestinationQueue:
    """The outbox folder of one destination and the thread that empties it."""

    def __init__(self, root: Path, destination: Destination, policy: RetryPolicy, metrics: Any):
        self.destination = destination
        self.label = destination.label
        self.directory = root / hashlib.sha256(self.label.encode()).hexdigest()[:16]
        self.failed_dir = self.directory / "failed"
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        (self.directory / "destination.txt").write_text(self.label + "\n")
        self.policy = policy
        self.metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._update_pending()

    # --- jobs ---------------------------------------------------------------------------------------------
    def jobs(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name[0].isdigit())

    def enqueue(self, files: Mapping[str, bytes], tag: str) -> Path:
        """A new job holding ``files`` (name -> Part-10 bytes), due now."""
        name = f"{time.time_ns():020d}-{tag}"
        tmp = self.directory / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        for fname, data in files.items():
            (tmp / fname).write_bytes(data)
        (tmp / "job.json").write_text(json.dumps({"attempts": 0, "next_attempt": 0.0}))
        target = self.directory / name
        os.replace(tmp, target)
        self._update_pending()
        self._wake.set()
        return target

    def _update_pending(self) -> None:
        self.metrics.outbox_pending.labels(self.label).set(len(self.jobs()))

    def process_due(self) -> float | None:
        """Send every due job once, oldest first; the seconds until the next job is due (None: none left)."""
        next_due: float | None = None
        for job in self.jobs():
            if self._stop.is_set():
                break
            try:
                state = json.loads((job / "job.json").read_text())
            except (OSError, ValueError):
                state = {"attempts": 0, "next_attempt": 0.0}
            wait = float(state.get("next_attempt", 0.0)) - time.time()
            if wait > 0:
                next_due = wait if next_due is None else min(next_due, wait)
                continue
            files = sorted(p for p in job.iterdir() if p.suffix == ".dcm")
            t0 = time.perf_counter()
            try:
                self.destination.send(files)
            except Exception as exc:  # noqa: BLE001 - any failure of a send is retried
                attempts = int(state.get("attempts", 0)) + 1
                self.metrics.destination_failures.labels(self.label).inc()
                reason = str(exc) if isinstance(exc, SendError) else type(exc).__name__
                if attempts >= self.policy.max_attempts:
                    os.replace(job, self.failed_dir / job.name)
                    self.metrics.destination_given_up.labels(self.label).inc()
                    log.error("destination send given up", extra={
                        "destination": self.label, "attempt": attempts, "reason": reason})
                    continue
                delay = self.policy.delay_s(attempts)
                (job / "job.json").write_text(json.dumps({"attempts": attempts,
                                                          "next_attempt": time.time() + delay}))
                log.warning("destination send failed", extra={
                    "destination": self.label, "attempt": attempts, "retry_in_s": delay, "reason": reason})
                next_due = delay if next_due is None else min(next_due, delay)
                continue
            self.metrics.destination_sent.labels(self.label).inc(len(files))
            self.metrics.destination_latency.labels(self.label).observe(time.perf_counter() - t0)
            shutil.rmtree(job, ignore_errors=True)
            log.info("results sent", extra={"destination": self.label, "objects": len(files)})
        self._update_pending()
        return next_due

    # --- thread -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"ich-outbox-{self.directory.name[:6]}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                next_due = self.process_due()
            except Exception as exc:  # noqa: BLE001 - the sender thread must survive anything
                log.error("outbox error", extra={"destination": self.label, "error_type": type(exc).__name__})
                next_due = self.policy.base_s
            self._wake.wait(timeout=60.0 if next_due is None else max(0.05, next_due))

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


class Outbox:
    """One :class:`DestinationQueue` per destination; :meth:`enqueue` puts a copy of a result into each."""

    def __init__(self, root: Path, destinations: list[Destination], policy: RetryPolicy, metrics: Any):
        root.mkdir(parents=True, exist_ok=True)
        self.queues = [DestinationQueue(root, d, policy, metrics) for d in destinations]

    def enqueue(self, files: Mapping[str, bytes], tag: str) -> None:
        for queue in self.queues:
            queue.enqueue(files, tag)

    def start(self) -> None:
        for queue in self.queues:
            queue.start()

    def stop(self) -> None:
        for queue in self.queues:
            queue.stop()
