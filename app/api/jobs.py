"""Asynchronous predictions (``Prefer: respond-async`` on ``POST /v1/predictions``), shared through the store.

``POST`` admits and receives the upload as usual, records a :class:`~app.api.store.JobState` ``queued`` and
answers 202 at once; the work runs here as a task that owns the admission slot (``running`` when it starts,
then the result is stored under the job's id and the state becomes ``done``, or ``failed`` with the problem+json
the synchronous request would have answered). ``GET /v1/predictions/{id}`` on any replica reads the state from
the store.

Every replica refreshes its heartbeat in the store every ``heartbeat_interval_s``; a job ``queued`` or
``running`` whose replica's heartbeat is older than ``heartbeat_timeout_s`` (the replica died, or lost the
store) is marked ``failed`` with 503 ``job_lost`` by the first replica that reads it. On shutdown a replica
lets its jobs finish (up to ``shutdown_grace_s``) before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from app.api.problems import Problem
from app.api.store import JobState, StoreUnavailable
from app.errors import IngestionError

if TYPE_CHECKING:
    from app.api.service import Admission, PredictionService

log = logging.getLogger("app.api.jobs")


class JobLinks(BaseModel):
    self: str


class JobStatusResponse(BaseModel):
    """The 202 answer of an asynchronous prediction still in progress (poll ``links.self``)."""

    id: str
    status: Literal["queued", "running"]
    links: JobLinks


def wants_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header (RFC 7240) asks for ``respond-async``."""
    if not prefer:
        return False
    tokens = (part.split("=", 1)[0].strip().lower() for item in prefer.split(",") for part in item.split(";"))
    return "respond-async" in tokens


def status_body(state: JobState, base_url: str = "") -> dict[str, Any]:
    return JobStatusResponse(id=state.id, status=state.status,  # type: ignore[arg-type]
                             links=JobLinks(self=f"{base_url}/v1/predictions/{state.id}")).model_dump()


def _failure(problem: Problem) -> dict[str, Any]:
    return {"status": problem.status, "code": problem.code, "title": problem.title, "detail": problem.detail,
            "extra": problem.extra}


class AsyncJobs:
    """The asynchronous jobs of one replica (``service.jobs``)."""

    def __init__(self, service: PredictionService):
        self.service = service
        self.replica = uuid.uuid4().hex[:16]
        self._tasks: set[asyncio.Future[Any]] = set()

    @property
    def store(self) -> Any:
        return self.service.store

    async def _save(self, state: JobState) -> None:
        await self.service.stored(self.store.put_job, state)

    async def submit(self, admission: Admission, *, series_instance_uid: str | None,
                     onset_to_ct_hours: float | None, base_url: str = "") -> JobState:
        """Record the job (503 ``store_unavailable`` when the store is down: nothing is started) and start it."""
        from app.api.service import Job

        assert admission.upload is not None, "receive() the upload first"
        now = time.time()
        state = JobState(id=uuid.uuid4().hex, status="queued", replica=self.replica, created=now, updated=now)
        await self._save(state)
        job = Job(upload=admission.upload, series_instance_uid=series_instance_uid,
                  onset_to_ct_hours=onset_to_ct_hours)
        task = asyncio.ensure_future(self._work(state, job, admission, base_url))
        admission.work = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return state

    async def _work(self, state: JobState, job: Any, admission: Admission, base_url: str) -> None:
        service = self.service
        failure: Problem | None = None
        run: asyncio.Future[Any] | None = None
        try:
            await self._update(state, "running")
            run = asyncio.ensure_future(service.run(job, base_url=base_url, prediction_id=state.id))
            await asyncio.wait_for(asyncio.shield(run), timeout=admission.remaining_s())
        except TimeoutError:
            failure = Problem("processing_timeout",
                              f"The prediction took longer than {service.settings.request_timeout_s} s",
                              headers=service.retry_after())
        except Problem as exc:
            failure = exc
        except IngestionError as exc:
            failure = Problem.from_ingestion(exc)
        except asyncio.CancelledError:
            failure = Problem("job_lost", "The replica running this prediction stopped", headers=service.retry_after())
        except Exception as exc:  # noqa: BLE001 - a job's failure is its answer, never a crash of the replica
            log.error("asynchronous prediction failed", extra={"error_type": type(exc).__name__})
            failure = Problem("internal_error", "An unexpected error occurred; it has been logged.", status=500)
        finally:
            if run is not None and not run.done():  # stop after the current stage, then give the slot back
                job.cancelled = True
                with contextlib.suppress(BaseException):
                    await run
        if failure is None:
            await self._update(state, "done")
        else:
            state.problem, state.headers = _failure(failure), failure.headers or None
            await self._update(state, "failed")

    async def _update(self, state: JobState, status: Literal["running", "done", "failed"]) -> None:
        state.status = status
        state.updated = time.time()
        try:
            await self._save(state)
        except Problem:  # the store is down: the job's replica is alive, readers see the last state they can
            if status == "running":
                raise
            log.warning("job state not saved", extra={"status": status})

    async def status(self, job_id: str) -> JobState | None:
        """The job's state, failed (503 ``job_lost``) here when its replica's heartbeat has stopped."""
        state = await self.service.stored(self.store.get_job, job_id)
        if state is None or state.status not in ("queued", "running"):
            return state
        if state.replica == self.replica or await self.service.stored(self.store.replica_alive, state.replica):
            return state
        again = await self.service.stored(self.store.get_job, job_id)  # it may have finished meanwhile
        if again is None or again.status not in ("queued", "running"):
            return again
        lost = Problem("job_lost", "The replica running this prediction stopped before it finished; submit the "
                       "study again", headers=self.service.retry_after())
        state.status, state.updated = "failed", time.time()
        state.problem, state.headers = _failure(lost), lost.headers
        await self.service.stored(self.store.put_job, state)
        log.warning("job of a stopped replica failed", extra={"prediction_id": job_id})
        return state

    async def heartbeat_loop(self) -> None:
        """Refresh this replica's heartbeat until cancelled; a store failure is logged, the loop goes on."""
        s = self.service.settings
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.service.store_pool, self.store.beat, self.replica, s.heartbeat_timeout_s)
            except StoreUnavailable as exc:
                log.warning("heartbeat not saved", extra={"error": str(exc)})
            await asyncio.sleep(s.heartbeat_interval_s)

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for this replica's running jobs (shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
