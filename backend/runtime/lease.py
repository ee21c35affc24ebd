"""Running one cycle under the project's lease: claim, heartbeat, record the outcome.

:func:`run_cycle_once` takes the project's lease (exclusive across processes), marks the queued
cycle record running, calls the injected runner with a :class:`~backend.loop.contract.CycleContext`
and closes the record as succeeded or failed with the error. The scheduler's jobs, ``labelloop
worker`` and ``labelloop cycle --project ID`` all run cycles through it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError

from backend.loop.contract import CycleContext, CycleResult, CycleRunner
from backend.store import cycle_records
from backend.store.db import Store
from backend.store.models import Cycle, utcnow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class CycleRun:
    cycle_id: int
    state: Literal["succeeded", "failed"]
    error: str | None = None


def new_owner() -> str:
    """A lease owner name that says which process holds it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Heartbeat:
    """A thread renewing the lease every ``interval_s``; sets ``lost`` when renewal is refused."""

    def __init__(self, renew: Callable[[], bool], interval_s: float, lost: threading.Event) -> None:
        self._renew, self._interval, self._lost = renew, interval_s, lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labelloop-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                renewed = self._renew()
            except SQLAlchemyError:  # a busy database must not kill the cycle; retry next beat
                log.warning("could not renew a cycle lease; retrying", exc_info=True)
                continue
            if not renewed:
                self._lost.set()
                return


def _claim(
    store: Store, project_id: int, owner: str, trigger: str | None, lease_s: float, now: datetime
) -> tuple[int, str] | None:
    with store.session() as session:
        cycle_records.reap_interrupted(session, now=now)
        if not cycle_records.acquire_lease(session, project_id, owner, now=now, ttl_s=lease_s):
            return None
        cycle = cycle_records.start(session, project_id, trigger=trigger, now=now)
        if cycle is None:
            cycle_records.release_lease(session, project_id, owner)
            return None
        return cycle.id, cycle.trigger


def _describe(exc: Exception, stage: str | None) -> str:
    where = f"in stage {stage}: " if stage else ""
    return f"{where}{type(exc).__name__}: {exc}"


def _execute(store: Store, runner: CycleRunner, ctx: CycleContext, clock: Clock) -> CycleRun:
    log.info("cycle %d of project %d started", ctx.cycle_id, ctx.project_id)
    started = time.perf_counter()
    try:
        result = runner(ctx, ctx.project_id) or CycleResult()
    except Exception as exc:  # any failure of the cycle is recorded; the next cycle retries
        with store.session() as session:
            cycle = session.get(Cycle, ctx.cycle_id)
            error = _describe(exc, cycle.stage if cycle else None)
            cycle_records.fail(session, ctx.cycle_id, error, now=clock())
        log.exception("cycle %d of project %d failed", ctx.cycle_id, ctx.project_id)
        return CycleRun(ctx.cycle_id, "failed", error)
    with store.session() as session:
        cycle_records.succeed(
            session,
            ctx.cycle_id,
            now=clock(),
            model_version=result.model_version,
            metrics=result.metrics,
        )
    log.info(
        "cycle %d of project %d succeeded in %.1f s: model version %s",
        ctx.cycle_id,
        ctx.project_id,
        time.perf_counter() - started,
        result.model_version,
    )
    if result.after is not None:
        _after(store, ctx, result.after)
    return CycleRun(ctx.cycle_id, "succeeded")


def _after(store: Store, ctx: CycleContext, work: Callable[[], Mapping[str, Any]]) -> None:
    started = time.perf_counter()
    try:
        counts = dict(work())
    except Exception:  # the cycle has succeeded; the next one does this work again
        log.exception("after cycle %d of project %d", ctx.cycle_id, ctx.project_id)
        counts = {"failed": 1}
    with store.session() as session:
        cycle_records.record_after(
            session, ctx.cycle_id, seconds=time.perf_counter() - started, counts=counts
        )


def run_cycle_once(
    store: Store,
    runner: CycleRunner,
    project_id: int,
    *,
    trigger: str | None = None,
    lease_s: float = 120.0,
    clock: Clock = utcnow,
) -> CycleRun | None:
    """Run the project's cycle now under its lease, recording it from running to its outcome.

    Used by the scheduler's job and by ``labelloop cycle --project ID``.

    Args:
        trigger: record a cycle with this trigger even when none is queued (a manual run);
            None runs only a queued cycle.
        lease_s: how long the lease lasts without a heartbeat (renewed every ``lease_s / 4``).

    Returns:
        the outcome, or None when nothing ran: another process holds the project's lease, or
        nothing was queued and no trigger given.
    """
    owner = new_owner()
    claimed = _claim(store, project_id, owner, trigger, lease_s, clock())
    if claimed is None:
        return None
    cycle_id, recorded_trigger = claimed
    lost = threading.Event()
    ctx = CycleContext(
        store, cycle_id=cycle_id, project_id=project_id, trigger=recorded_trigger, lease_lost=lost
    )

    def renew() -> bool:
        with store.session() as session:
            return cycle_records.renew_lease(session, project_id, owner, now=clock(), ttl_s=lease_s)

    try:
        with _Heartbeat(renew, lease_s / 4, lost):
            return _execute(store, runner, ctx, clock)
    finally:
        with store.session() as session:
            cycle_records.release_lease(session, project_id, owner)
