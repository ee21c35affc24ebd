"""Reconcile: make the store equal to Label Studio, whatever webhooks were lost.

Webhooks are the fast path but Label Studio never retries them, so every cycle (and
``labelloop sync``) starts here: apply the inbox, list every task with its annotations from the API
in large pages, upsert what changed and tombstone what Label Studio no longer has, including
annotations deleted while the backend was down. A cycle lists every task only every
``loop.full_sync_every_s`` (:func:`full_sync_due`); in between it lists the tasks whose
``updated_at`` moved since the last sync (:func:`_changed_since`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, Protocol

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from backend.loop import ingest
from backend.loop.contract import Snapshot
from backend.loop.inbox import apply_pending
from backend.loop.targets import NotEnoughLabels, consensus_targets
from backend.store import repo
from backend.store.db import Store
from backend.store.models import Annotation, Project, Task, utcnow

log = logging.getLogger(__name__)
CHUNK = 1000
#: An incremental sync looks this far back before the newest ``updated_at`` the last sync saw, so
#: changes committed while that sync was listing are not skipped: the longest a Label Studio
#: transaction may take between setting a task's ``updated_at`` and committing it.
OVERLAP = timedelta(minutes=2)
#: Just before a stamp, for a "strictly later" filter that keeps the stamp itself.
TICK = timedelta(microseconds=1)


class TaskSource(Protocol):
    """What reconcile needs from Label Studio (``backend.labelstudio.client.LabelStudio``)."""

    def get_project(self, project: int) -> dict[str, Any]: ...

    def iter_tasks(
        self, project: int, *, updated_since: datetime | None = None
    ) -> Iterator[dict[str, Any]]: ...

    def iter_task_stamps(
        self, project: int, *, updated_since: datetime | None = None
    ) -> Iterator[tuple[int, str | None]]: ...


@dataclass(frozen=True)
class SyncReport:
    project_id: int
    tasks: int
    annotations: int
    tasks_changed: Counter[str]
    annotations_changed: Counter[str]
    tasks_deleted: int
    annotations_deleted: int
    events_applied: int
    seconds: float
    incremental: bool = False
    #: Tasks of the overlap window whose stamps alone were listed (incremental only).
    probed: int = 0

    def summary(self) -> str:
        return (
            f"project {self.project_id} ({'incremental' if self.incremental else 'full'}): "
            f"{self.tasks} tasks, {self.annotations} annotations in "
            f"Label Studio; tasks {dict(self.tasks_changed)}, annotations "
            f"{dict(self.annotations_changed)}; deleted {self.tasks_deleted} tasks and "
            f"{self.annotations_deleted} annotations; {self.events_applied} inbox events applied; "
            f"{self.probed} stamps checked; {self.seconds:.2f} s"
        )


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _sync_chunk(
    session: Session,
    project: Project,
    tasks: list[dict[str, Any]],
    seen: tuple[set[int], set[int]],
    changes: tuple[Counter[str], Counter[str]],
) -> None:
    ids = [int(t["id"]) for t in tasks]
    # Load the chunk's rows in two queries so the upserts below hit the identity map.
    session.scalars(select(Task).where(Task.id.in_(ids))).all()
    session.scalars(select(Annotation).where(Annotation.task_id.in_(ids))).all()
    for task in tasks:
        seen[0].add(int(task["id"]))
        changes[0][ingest.upsert_task(session, project, task, listed=True)] += 1
        for annotation in task.get("annotations") or []:
            seen[1].add(int(annotation["id"]))
            outcome = ingest.upsert_annotation(
                session, project, int(task["id"]), annotation, from_reconcile=True
            )
            changes[1][outcome] += 1


def _stale_ids(session: Session, stmt: Select[int], seen: set[int]) -> list[int]:
    return sorted(set(session.scalars(stmt)) - seen)


def _tombstone(
    session: Session,
    project_id: int,
    seen: tuple[set[int], set[int]],
    started: datetime,
    *,
    full: bool,
) -> tuple[int, int]:
    """Delete what Label Studio no longer lists; rows written during this sync are left alone.

    A full pass can see every deletion. An incremental pass only lists changed tasks, so it can
    only see annotations deleted from those (Label Studio bumps a task's ``updated_at`` when one of
    its annotations is deleted); deleted tasks wait for the next full pass.
    """
    anns = select(Annotation.id).where(
        Annotation.project_id == project_id,
        Annotation.deleted.is_(False),
        Annotation.synced_at < started,
    )
    if not full:
        anns = anns.where(Annotation.task_id.in_(sorted(seen[0])))
    ann_ids = _stale_ids(session, anns, seen[1])
    task_ids: list[int] = []
    if full:
        tasks = select(Task.id).where(
            Task.project_id == project_id, Task.deleted.is_(False), Task.synced_at < started
        )
        task_ids = _stale_ids(session, tasks, seen[0])
        for start in range(0, len(task_ids), CHUNK):
            chunk = task_ids[start : start + CHUNK]
            session.execute(update(Task).where(Task.id.in_(chunk)).values(deleted=True))
    return len(task_ids), repo.delete_annotations(session, ann_ids, at=started)


def _changed_since(
    store: Store, ls: TaskSource, project_id: int, cursor: datetime
) -> tuple[datetime | None, datetime, int]:
    """Where an incremental sync lists full tasks from, the newest stamp seen, and how many stamps.

    Only the tasks' ``(id, updated_at)`` are listed over :data:`OVERLAP` before ``cursor``: a
    task of that window whose stamp equals the one of its last full listing is already in the
    store (right after a bulk import, that is every imported task, which a full listing would
    send again). The stamp a webhook wrote does not count: its payload may lack the task's
    annotations. Full tasks are listed from the oldest stamp that differs; None when none does.
    """
    window = cursor - OVERLAP
    stamps = {i: repo.parse_ts(u) for i, u in ls.iter_task_stamps(project_id, updated_since=window)}
    with store.session() as session:
        rows = session.execute(
            select(Task.id, Task.ls_listed_updated_at).where(
                Task.project_id == project_id,
                Task.deleted.is_(False),
                Task.ls_listed_updated_at > window,
            )
        )
        stored = {task_id: stamp for task_id, stamp in rows}
    changed = [u for i, u in stamps.items() if u is None or stored.get(i) != u]
    newest = max([cursor, *(u for u in stamps.values() if u is not None)])
    if not changed:
        return None, newest, len(stamps)
    if any(u is None for u in changed):
        return window, newest, len(stamps)
    return min(u for u in changed if u is not None) - TICK, newest, len(stamps)


def _window_settled(project: Project) -> bool:
    """Whether the tasks just before the cursor need no check: a sync started checking them at
    least :data:`OVERLAP` (on our clock, which measures elapsed time whatever Label Studio's reads)
    after the cursor took its value. A transaction that could still give a task a stamp at or
    before the cursor had begun by then, so it had committed before that check."""
    seen, checked = project.ls_cursor_seen_at, project.ls_window_checked_at
    return seen is not None and checked is not None and checked >= seen + OVERLAP


def reconcile(
    store: Store, ls: TaskSource, project_id: int, *, incremental: bool = False
) -> SyncReport:
    """Sync one project from the Label Studio API into the store.

    Args:
        store: the state store.
        ls: the Label Studio client.
        project_id: the Label Studio project.
        incremental: list only tasks changed since the newest task ``updated_at`` the last sync
            saw (Label Studio's clock, never ours; the :data:`OVERLAP` before it by their stamps
            alone, see :func:`_changed_since`, until :func:`_window_settled`); falls back to a
            full pass when the project was never synced. Deleted tasks are only found by a full
            pass.
    """
    t0, started = time.perf_counter(), utcnow()
    applied = apply_pending(store, project_id=project_id).total
    info = ls.get_project(project_id)
    with store.session() as session:
        project = repo.ensure_project(session, project_id)
        cursor, settled = project.ls_synced_until, _window_settled(project)
        project.title = info.get("title") or project.title
        if isinstance(info.get("label_config"), str):
            ingest.set_label_config(session, project, info["label_config"])
    seen: tuple[set[int], set[int]] = (set(), set())
    changes: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
    full, probed = True, 0
    newest: datetime | None = None
    listing: Iterable[dict[str, Any]] = ()
    since: datetime | None
    if incremental and cursor is not None:
        full = False
        if settled:
            since = newest = cursor
        else:
            since, newest, probed = _changed_since(store, ls, project_id, cursor)
        if since is not None:
            listing = ls.iter_tasks(project_id, updated_since=since)
    else:
        listing = ls.iter_tasks(project_id)
    for chunk in _chunks(listing, CHUNK):
        with store.session() as session:
            project = repo.ensure_project(session, project_id)
            _sync_chunk(session, project, chunk, seen, changes)
        stamps = [s for s in (repo.parse_ts(t.get("updated_at")) for t in chunk) if s is not None]
        newest = max([*stamps, *([newest] if newest is not None else [])], default=None)
    listed_at = utcnow()
    with store.session() as session:
        deleted = _tombstone(session, project_id, seen, started, full=full)
        project = repo.ensure_project(session, project_id)
        if newest != cursor:
            project.ls_cursor_seen_at = listed_at
        if full or not settled:
            project.ls_window_checked_at = started
        project.last_synced_at, project.ls_synced_until = listed_at, newest
        if full:
            project.last_full_sync_at = started
    report = SyncReport(
        project_id=project_id,
        tasks=len(seen[0]),
        annotations=len(seen[1]),
        tasks_changed=changes[0],
        annotations_changed=changes[1],
        tasks_deleted=deleted[0],
        annotations_deleted=deleted[1],
        events_applied=applied,
        seconds=time.perf_counter() - t0,
        incremental=not full,
        probed=probed,
    )
    log.info("reconciled %s", report.summary())
    return report


def full_sync_due(
    store: Store, project_id: int, every_s: float, now: datetime | None = None
) -> bool:
    """Whether a cycle's reconcile must list every task: the project was never listed in full,
    or not for ``every_s`` seconds (0: every time). In between, webhooks carry deletions and an
    incremental sync the rest (Label Studio bumps a task's ``updated_at`` with its annotations)."""
    if every_s <= 0:
        return True
    with store.session() as session:
        project = session.get(Project, project_id)
        last = project.last_full_sync_at if project is not None else None
    if last is None:
        return True
    return (now or utcnow()) - last >= timedelta(seconds=every_s)


def load_snapshot(store: Store, project_id: int) -> Snapshot:
    with store.session() as session:
        project = session.get(Project, project_id)
        cfg = ingest.project_config(project) if project is not None else None
        if cfg is None:
            reason = project.config_error if project is not None else "unknown project"
            raise NotEnoughLabels(f"project {project_id} has no supported label config: {reason}")
        tasks = repo.live_tasks(session, project_id)
        annotations = repo.live_annotations(session, project_id)
    return Snapshot(cfg, tasks, annotations, consensus_targets(annotations, cfg))
