"""Repository functions for cycle records and the per-project loop state.

A cycle record is the durable form of "this project should be retrained": a trigger (debounce,
START_TRAINING, schedule, manual, connect; from any process) writes or joins the project's one
*queued* record; the scheduler's job is only the alarm clock that makes it run. Running it takes the
project's lease first (:func:`acquire_lease`): a conditional UPDATE that succeeds for exactly one
caller while the lease is free or expired, so two processes never run a cycle of one project at
once. The holder renews it by heartbeat; when a holder dies its lease expires and
:func:`reap_interrupted` marks its cycle failed ("interrupted").

All functions work inside the caller's session and take ``now`` explicitly, so tests drive time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.store.models import Cycle, LoopState

CycleState = Literal["queued", "running", "succeeded", "failed"]
Trigger = Literal["debounce", "start_training", "schedule", "manual", "connect"]
TRIGGERS: tuple[str, ...] = get_args(Trigger)
INTERRUPTED = "interrupted: the process running it stopped (lease expired)"
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class CycleStatus:
    """A project's loop as a person asks about it: what is happening now, or what went wrong."""

    state: Literal["idle", "queued", "running", "failed"]
    cycle_id: int | None = None
    trigger: str | None = None
    stage: str | None = None
    progress: Mapping[str, Any] | None = None
    due_at: datetime | None = None
    error: str | None = None
    queued_next: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "cycle_id": self.cycle_id,
            "trigger": self.trigger,
            "stage": self.stage,
            "progress": dict(self.progress) if self.progress is not None else None,
            "due_at": _iso(self.due_at),
            "error": self.error,
            "queued_next": self.queued_next,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def to_dict(cycle: Cycle) -> dict[str, Any]:
    """A cycle record as JSON-ready data (the history API and ``labelloop status``)."""
    return {
        "id": cycle.id,
        "project_id": cycle.project_id,
        "trigger": cycle.trigger,
        "state": cycle.state,
        "stage": cycle.stage,
        "progress": cycle.progress,
        "stage_timings": cycle.stage_timings,
        "counts": cycle.counts,
        "model_version": cycle.model_version,
        "metrics": cycle.metrics,
        "error": cycle.error,
        "queued_at": _iso(cycle.queued_at),
        "due_at": _iso(cycle.due_at),
        "started_at": _iso(cycle.started_at),
        "finished_at": _iso(cycle.finished_at),
        "heartbeat_at": _iso(cycle.heartbeat_at),
    }


# ---------------------------------------------------------------- loop state and lease


def loop_state(session: Session, project_id: int) -> LoopState:
    """The project's loop state row, created (race-safely) when missing."""
    row = session.get(LoopState, project_id)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            session.add(LoopState(project_id=project_id, changes=0))
    except IntegrityError:  # another process created it first; use theirs
        pass
    return session.get(LoopState, project_id, populate_existing=True) or _missing(project_id)


def _missing(project_id: int) -> LoopState:
    raise RuntimeError(f"loop state of project {project_id} vanished while being created")


def add_changes(session: Session, project_id: int, n: int) -> LoopState:
    """Count ``n`` more annotation changes since the last cycle started (atomic increment)."""
    loop_state(session, project_id)
    session.execute(
        update(LoopState)
        .where(LoopState.project_id == project_id)
        .values(changes=LoopState.changes + n)
        .execution_options(synchronize_session=False)
    )
    return session.get(LoopState, project_id, populate_existing=True) or _missing(project_id)


def acquire_lease(
    session: Session, project_id: int, owner: str, *, now: datetime, ttl_s: float
) -> bool:
    """Take the project's cycle lease if it is free or expired; True when ``owner`` now holds it."""
    loop_state(session, project_id)
    result = session.execute(
        update(LoopState)
        .where(
            LoopState.project_id == project_id,
            or_(LoopState.lease_owner.is_(None), LoopState.lease_expires_at < now),
        )
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def renew_lease(
    session: Session, project_id: int, owner: str, *, now: datetime, ttl_s: float
) -> bool:
    """Extend ``owner``'s lease and its cycle's heartbeat; False when it is no longer ours."""
    result = session.execute(
        update(LoopState)
        .where(LoopState.project_id == project_id, LoopState.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return False
    state = session.get(LoopState, project_id, populate_existing=True)
    if state is not None and state.lease_cycle_id is not None:
        session.execute(
            update(Cycle)
            .where(Cycle.id == state.lease_cycle_id, Cycle.state == "running")
            .values(heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
    return True


def release_lease(session: Session, project_id: int, owner: str) -> None:
    """Give the lease back (a no-op when it was already taken over)."""
    session.execute(
        update(LoopState)
        .where(LoopState.project_id == project_id, LoopState.lease_owner == owner)
        .values(lease_owner=None, lease_cycle_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _lease_alive(state: LoopState | None, cycle_id: int, now: datetime) -> bool:
    return (
        state is not None
        and state.lease_owner is not None
        and state.lease_cycle_id == cycle_id
        and state.lease_expires_at is not None
        and state.lease_expires_at >= now
    )


def reap_interrupted(session: Session, *, now: datetime) -> list[int]:
    """Mark running cycles whose lease is gone or expired as failed; returns their ids.

    Expired leases are freed too, conditionally on still being the expired one, so a lease taken
    over meanwhile is never touched.
    """
    reaped = []
    for cycle in list(session.scalars(select(Cycle).where(Cycle.state == "running"))):
        state = session.get(LoopState, cycle.project_id)
        if not _lease_alive(state, cycle.id, now):
            _finish(cycle, "failed", now=now, error=INTERRUPTED)
            reaped.append(cycle.id)
    session.execute(
        update(LoopState)
        .where(LoopState.lease_owner.is_not(None), LoopState.lease_expires_at < now)
        .values(lease_owner=None, lease_cycle_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return reaped


# ---------------------------------------------------------------- the cycle's life


def queued_cycle(session: Session, project_id: int) -> Cycle | None:
    """The project's waiting cycle (the oldest, should two processes have raced)."""
    stmt = select(Cycle).where(Cycle.project_id == project_id, Cycle.state == "queued")
    return session.scalars(stmt.order_by(Cycle.id).limit(1)).first()


def queued_cycles(session: Session) -> list[Cycle]:
    """Every waiting cycle, all projects."""
    return list(session.scalars(select(Cycle).where(Cycle.state == "queued").order_by(Cycle.id)))


def request(
    session: Session, project_id: int, trigger: str, *, due_at: datetime, now: datetime
) -> Cycle:
    """Queue a cycle, or fold this trigger into the one already waiting.

    A waiting cycle only moves earlier, taking the earlier trigger's name, except that a debounce
    may push its own debounce run later (the caller caps that at ``max_delay_s``).
    """
    cycle = queued_cycle(session, project_id)
    if cycle is None:
        cycle = Cycle(
            project_id=project_id,
            trigger=trigger,
            state="queued",
            queued_at=now,
            due_at=due_at,
            stage_timings={},
            counts={},
            metrics={},
        )
        session.add(cycle)
        session.flush()
        return cycle
    pushed_back = trigger == "debounce" == cycle.trigger
    if pushed_back or cycle.due_at is None or due_at < cycle.due_at:
        cycle.trigger, cycle.due_at = trigger, due_at
    return cycle


def start(session: Session, project_id: int, *, trigger: str | None, now: datetime) -> Cycle | None:
    """Turn the waiting cycle into the running one; the caller must hold the project's lease.

    Every other waiting record of the project is folded into this run, and the debounce counter
    starts again from zero: this cycle's reconcile sees every change made so far.

    Args:
        trigger: run even when nothing waits, recording this trigger (``labelloop cycle``);
            None runs only a waiting cycle and returns None when there is none.
    """
    waiting = list(
        session.scalars(
            select(Cycle)
            .where(Cycle.project_id == project_id, Cycle.state == "queued")
            .order_by(Cycle.id)
        )
    )
    if not waiting and trigger is None:
        return None
    cycle = (
        waiting[0]
        if waiting
        else request(session, project_id, trigger or "manual", due_at=now, now=now)
    )
    for extra in waiting[1:]:
        session.delete(extra)
    if trigger is not None:
        cycle.trigger = trigger
    cycle.state, cycle.started_at, cycle.heartbeat_at, cycle.due_at = "running", now, now, None
    state = loop_state(session, project_id)
    state.changes, state.triggered_at, state.lease_cycle_id = 0, None, cycle.id
    session.flush()
    return cycle


def enter_stage(session: Session, cycle_id: int, stage: str) -> None:
    cycle = session.get(Cycle, cycle_id)
    if cycle is not None and cycle.state == "running":
        cycle.stage, cycle.progress = stage, None


def end_stage(
    session: Session, cycle_id: int, stage: str, *, seconds: float, counts: Mapping[str, Any]
) -> None:
    """Record a stage's duration and counts (also when it failed: the time it took to fail)."""
    cycle = session.get(Cycle, cycle_id)
    if cycle is None or cycle.state != "running":
        return
    cycle.stage_timings = {**cycle.stage_timings, stage: round(seconds, 3)}
    if counts:
        cycle.counts = {**cycle.counts, stage: dict(counts)}


def record_after(
    session: Session, cycle_id: int, *, seconds: float, counts: Mapping[str, Any]
) -> None:
    """Record the work a succeeded cycle left for after its record (as the stage "after")."""
    cycle = session.get(Cycle, cycle_id)
    if cycle is None:
        return
    cycle.stage_timings = {**cycle.stage_timings, "after": round(seconds, 3)}
    cycle.counts = {**cycle.counts, "after": dict(counts)}


def set_progress(
    session: Session, cycle_id: int, done: int, total: int | None, per_s: float | None = None
) -> None:
    cycle = session.get(Cycle, cycle_id)
    if cycle is not None and cycle.state == "running":
        cycle.progress = {"done": done, "total": total}
        if per_s is not None:
            cycle.progress["per_s"] = round(per_s, 1)


def succeed(
    session: Session,
    cycle_id: int,
    *,
    now: datetime,
    model_version: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> bool:
    """Close a running cycle as succeeded; False when it was no longer running (reaped)."""
    cycle = session.get(Cycle, cycle_id)
    if cycle is None or cycle.state != "running":
        return False
    cycle.model_version, cycle.metrics = model_version, dict(metrics or {})
    _finish(cycle, "succeeded", now=now)
    return True


def fail(session: Session, cycle_id: int, error: str, *, now: datetime) -> bool:
    """Close a running cycle as failed with its error; False when it was no longer running."""
    cycle = session.get(Cycle, cycle_id)
    if cycle is None or cycle.state != "running":
        return False
    _finish(cycle, "failed", now=now, error=error[:MAX_ERROR_CHARS])
    return True


def _finish(cycle: Cycle, state: CycleState, *, now: datetime, error: str | None = None) -> None:
    cycle.state, cycle.finished_at, cycle.error, cycle.progress = state, now, error, None


# ---------------------------------------------------------------- reading


def history(session: Session, project_id: int, limit: int = 20) -> list[Cycle]:
    """The project's cycles, newest first (a waiting one included)."""
    stmt = select(Cycle).where(Cycle.project_id == project_id).order_by(Cycle.id.desc())
    return list(session.scalars(stmt.limit(limit)))


def current_state(session: Session, project_id: int, *, now: datetime) -> CycleStatus:
    """Idle, queued, running (stage, progress) or failed (the last cycle's error).

    A running record whose lease has expired reads as failed even before the reaper marks it, so
    a dead scheduler never shows as "running" forever.
    """
    waiting = queued_cycle(session, project_id)
    stmt = select(Cycle).where(Cycle.project_id == project_id, Cycle.state != "queued")
    last = session.scalars(stmt.order_by(Cycle.id.desc()).limit(1)).first()
    if last is not None and last.state == "running":
        if _lease_alive(session.get(LoopState, project_id), last.id, now):
            return CycleStatus(
                "running",
                last.id,
                last.trigger,
                last.stage,
                last.progress,
                queued_next=waiting is not None,
            )
        return CycleStatus("failed", last.id, last.trigger, last.stage, error=INTERRUPTED)
    if waiting is not None:
        return CycleStatus("queued", waiting.id, waiting.trigger, due_at=waiting.due_at)
    if last is not None and last.state == "failed":
        return CycleStatus("failed", last.id, last.trigger, last.stage, error=last.error)
    return CycleStatus("idle", last.id if last else None, last.trigger if last else None)
