"""Scale-out execution of cycles: the scheduler enqueues, ``labelloop worker`` processes run them.

With ``loop.executor: rq`` the one scheduler does not run cycles itself. When a project's queued
cycle is due it puts one job on the Redis queue ``loop.rq_queue`` (RQ); any number of
``labelloop worker`` processes, on any machine that reaches Redis, the state database and Label
Studio, take jobs and run the cycle with :func:`backend.runtime.lease.run_cycle_once`: the same
lease, records and failure handling as in one process, so a project still never runs two cycles at
once.

The cycle record in the state database stays the request; a job only says "look at project N". A
project has at most one job waiting or running (job id ``<rq_queue>-cycle-<project>``). The
scheduler offers the job again every ``loop.poll_s`` while the record waits, so a job lost with
Redis, or one that found the lease taken, is offered again; a worker killed mid-cycle leaves its
lease to expire and the record is marked failed (``interrupted``) by the next housekeeping pass.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.loop.contract import RunnerFactory
from backend.runtime.lease import run_cycle_once
from backend.settings import Settings
from backend.store.db import Store

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue
    from rq.job import Job
    from rq.worker import BaseWorker

log = logging.getLogger(__name__)

#: RQ statuses of a job that will still run: a second one for the project would only wait.
_PENDING = frozenset({"queued", "started", "deferred", "scheduled"})


def job_id(settings: Settings, project_id: int) -> str:
    """The RQ job id of a project's cycle: one waiting or running job per project and queue (so
    deployments sharing a Redis with queues of their own do not collide)."""
    return f"{settings.loop.rq_queue}-cycle-{project_id}"


def connect(settings: Settings) -> Redis:
    """A Redis connection for ``loop.redis_url`` (ValueError naming the setting when unset)."""
    from redis import Redis

    if not settings.loop.redis_url:
        raise ValueError("loop.executor is 'rq' but loop.redis_url is not set")
    return Redis.from_url(settings.loop.redis_url)


def cycle_queue(settings: Settings, connection: Redis) -> Queue:
    from rq import Queue

    return Queue(settings.loop.rq_queue, connection=connection)


def enqueue_cycle(settings: Settings, connection: Redis, project_id: int) -> bool:
    """Offer the project's due cycle to the workers; False when its job already waits or runs."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(job_id(settings, project_id), connection=connection)
        status = job.get_status(refresh=False)
    except NoSuchJobError:
        status = None
    if status is not None and str(getattr(status, "value", status)) in _PENDING:
        return False
    cycle_queue(settings, connection).enqueue(
        run_project_cycle,
        project_id,
        job_id=job_id(settings, project_id),
        job_timeout=settings.loop.rq_job_timeout_s,
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"labelloop cycle of project {project_id}",
    )
    log.info("cycle of project %d offered to the workers", project_id)
    return True


class RQDispatch:
    """What the scheduler calls instead of running a due cycle itself (``loop.executor: rq``)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection = connect(settings)

    def __call__(self, project_id: int) -> None:
        enqueue_cycle(self._settings, self._connection, project_id)


# ---------------------------------------------------------------- the worker's side


@dataclass(frozen=True)
class WorkerContext:
    """What a cycle job needs from the worker process that runs it (never sent through Redis)."""

    settings: Settings
    make_runner: RunnerFactory


def run_project_cycle(project_id: int, *, context: WorkerContext | None = None) -> dict[str, Any]:
    """The RQ job: run the project's queued cycle under its lease; what happened, for RQ's result.

    The job in Redis holds only ``project_id``; ``context`` is the running worker's, handed to the
    job by :func:`run_worker`'s job class.

    Returns ``{"state": "succeeded" | "failed" | "skipped", ...}``; "skipped" when another process
    holds the lease or nothing is queued (the scheduler offers the job again while it waits).
    """
    if context is None:
        raise RuntimeError("run_project_cycle runs inside `labelloop worker` (no worker context)")
    store = Store(context.settings.store.url)
    try:
        run = run_cycle_once(
            store,
            context.make_runner(context.settings, store),
            project_id,
            lease_s=context.settings.loop.lease_s,
        )
    finally:
        store.dispose()
    if run is None:
        return {"project": project_id, "state": "skipped"}
    return {"project": project_id, "cycle": run.cycle_id, "state": run.state, "error": run.error}


def _job_class() -> type[Job]:
    from rq.job import Job

    class ContextJob(Job):
        """A job that runs with the context of the worker that took it (``worker_context``)."""

        worker_context: WorkerContext | None = None

        def _execute(self) -> Any:
            if self.func is run_project_cycle:
                return run_project_cycle(*self.args, **self.kwargs, context=self.worker_context)
            return super()._execute()

    return ContextJob


def _worker_class(context: WorkerContext, *, fork: bool, listen: bool) -> type[BaseWorker]:
    from rq import SimpleWorker, Worker

    base: type[BaseWorker] = Worker if fork else SimpleWorker

    class ContextWorker(base):  # type: ignore[valid-type,misc]
        """Hands this worker's context to every job it runs (in the forked child too)."""

        def prepare_job_execution(self, job: Job, *args: Any, **kwargs: Any) -> None:
            job.worker_context = context  # type: ignore[attr-defined]
            super().prepare_job_execution(job, *args, **kwargs)

        if not listen:

            def subscribe(self) -> None:
                """No command listener (RQ polls it every 60 s, so it would outlive a burst)."""

    return ContextWorker


def run_worker(
    settings: Settings,
    make_runner: RunnerFactory,
    *,
    burst: bool = False,
    fork: bool = True,
    listen: bool = True,
) -> int:
    """``labelloop worker``: take cycle jobs from ``loop.rq_queue`` until stopped (or, ``burst``,
    until the queue is empty).

    Args:
        fork: each job in a child process (RQ's default: a crash or a leak ends with the job);
            False runs jobs in this process.
        listen: answer RQ's worker commands (``rq`` shutdown / kill-horse over Redis pub/sub).
    """
    store = Store(settings.store.url)
    store.upgrade()  # the schema is current before the first job
    store.dispose()
    connection = connect(settings)
    worker_class = _worker_class(WorkerContext(settings, make_runner), fork=fork, listen=listen)
    # RQ installs its own SIGINT/SIGTERM handlers (finish the job, then stop); put ours back after.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = worker_class(
            [cycle_queue(settings, connection)], connection=connection, job_class=_job_class()
        )
        log.info("labelloop worker on queue %s (%s)", settings.loop.rq_queue, worker.name)
        worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        connection.close()
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return 0
