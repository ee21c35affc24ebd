"""Reconcile: make the store equal to Label Studio, whatever webhooks were lost.

Webhooks are the fast path but Label Studio never retries them, so every cycle (and
``labelloop sync``) starts here: apply the inbox, list every task with its annotations from the API
in large pages, upsert what changed and tombstone what Label Studio no longer has, including
annotations deleted while the backend was down.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.inbox import apply_pending
from backend.store import repo
from backend.store.db import Store
from backend.store.models import Annotation, Project, Task, utcnow

log = logging.getLogger(__name__)
CHUNK = 1000


class TaskSource(Protocol):
    """What reconcile needs from Label Studio (``backend.labelstudio.client.LabelStudio``)."""

    def get_project(self, project: int) -> dict[str, Any]: ...

    def iter_tasks(self, project: int) -> Iterator[dict[str, Any]]: ...


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

    def summary(self) -> str:
        return (
            f"project {self.project_id}: {self.tasks} tasks, {self.annotations} annotations in "
            f"Label Studio; tasks {dict(self.tasks_changed)}, annotations "
            f"{dict(self.annotations_changed)}; deleted {self.tasks_deleted} tasks and "
            f"{self.annotations_deleted} annotations; {self.events_applied} inbox events applied; "
            f"{self.seconds:.2f} s"
        )


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
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
        changes[0][repo.upsert_task(session, project, task)] += 1
        for annotation in task.get("annotations") or []:
            seen[1].add(int(annotation["id"]))
            outcome = repo.upsert_annotation(
                session, project, int(task["id"]), annotation, from_reconcile=True
            )
            changes[1][outcome] += 1


def _tombstone(
    session: Session, project_id: int, seen: tuple[set[int], set[int]], started: datetime
) -> tuple[int, int]:
    """Delete what Label Studio no longer lists; rows written during this sync are left alone."""
    task_ids = (
        set(
            session.scalars(
                select(Task.id).where(
                    Task.project_id == project_id, Task.deleted.is_(False), Task.synced_at < started
                )
            )
        )
        - seen[0]
    )
    ann_ids = (
        set(
            session.scalars(
                select(Annotation.id).where(
                    Annotation.project_id == project_id,
                    Annotation.deleted.is_(False),
                    Annotation.synced_at < started,
                )
            )
        )
        - seen[1]
    )
    for chunk in _chunks(({"id": i} for i in sorted(task_ids)), CHUNK):
        session.execute(
            update(Task).where(Task.id.in_([c["id"] for c in chunk])).values(deleted=True)
        )
    deleted_anns = repo.delete_annotations(session, sorted(ann_ids), at=started)
    return len(task_ids), deleted_anns


def reconcile(store: Store, ls: TaskSource, project_id: int) -> SyncReport:
    """Full sync of one project from the Label Studio API into the store."""
    t0, started = time.perf_counter(), utcnow()
    applied = apply_pending(store, project_id=project_id).total
    info = ls.get_project(project_id)
    with store.session() as session:
        project = repo.ensure_project(session, project_id)
        project.title = info.get("title") or project.title
        if isinstance(info.get("label_config"), str):
            repo.set_label_config(session, project, info["label_config"])
    seen: tuple[set[int], set[int]] = (set(), set())
    changes: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
    for chunk in _chunks(ls.iter_tasks(project_id), CHUNK):
        with store.session() as session:
            project = repo.ensure_project(session, project_id)
            _sync_chunk(session, project, chunk, seen, changes)
    with store.session() as session:
        deleted = _tombstone(session, project_id, seen, started)
        repo.ensure_project(session, project_id).last_synced_at = utcnow()
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
    )
    log.info("reconciled %s", report.summary())
    return report
