"""The webhook inbox: accept a delivery in one durable write, apply it later.

Label Studio sends webhooks synchronously inside the annotator's save request, with a 1 s
timeout and no retry. So ``/webhook`` only validates and stores; :func:`apply_pending` (run by the
worker thread, by ``labelloop sync`` and at the start of every cycle) turns stored events into task
and annotation rows. Applying is idempotent and order-safe (see :mod:`backend.store.repo`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from backend.store import repo
from backend.store.db import Store
from backend.store.models import InboxEvent, utcnow

log = logging.getLogger(__name__)

HANDLED_ACTIONS = frozenset(
    {
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_DELETED",
        "TASKS_CREATED",
        "START_TRAINING",
        "PROJECT_UPDATED",
    }
)


class BadEvent(ValueError):
    """A webhook body that is not a Label Studio event we can read."""


@dataclass(frozen=True)
class ParsedEvent:
    action: str
    project_id: int | None
    payload: dict[str, Any]


def parse_event(payload: Any) -> ParsedEvent:
    """Validate the parts of a webhook body we rely on; the rest is kept as it came."""
    if not isinstance(payload, dict):
        raise BadEvent("webhook body must be a JSON object")
    action = payload.get("action")
    if not isinstance(action, str) or not action:
        raise BadEvent("webhook body has no 'action'")
    project = payload.get("project")
    project_id = project.get("id") if isinstance(project, dict) else project
    if project_id is not None and not isinstance(project_id, int):
        raise BadEvent("'project.id' must be an integer")
    if action in HANDLED_ACTIONS and project_id is None:
        raise BadEvent(f"{action} event has no 'project.id'")
    return ParsedEvent(action=action, project_id=project_id, payload=payload)


@dataclass
class ApplyReport:
    applied: Counter[tuple[int | None, str]] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    train_requested: set[int] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(self.applied.values())


def _apply_annotation(session: Session, payload: Mapping[str, Any], project_id: int) -> str:
    annotation = payload.get("annotation")
    if not isinstance(annotation, dict) or "id" not in annotation:
        return "ignored: no annotation"
    task = payload.get("task")
    task_id = annotation.get("task") or (task.get("id") if isinstance(task, dict) else None)
    if task_id is None:
        return "ignored: no task id"
    project = repo.ensure_project(session, project_id)
    if isinstance(task, dict) and "id" in task:
        repo.upsert_task(session, project, task)
    return repo.upsert_annotation(session, project, int(task_id), annotation)


def _apply_deleted(session: Session, payload: Mapping[str, Any], event: InboxEvent) -> str:
    items = payload.get("annotations") or []
    ids = [int(a["id"]) for a in items if isinstance(a, dict) and "id" in a]
    return f"deleted {repo.delete_annotations(session, ids, at=event.received_at)}"


def _apply_tasks(session: Session, payload: Mapping[str, Any], project_id: int) -> str:
    project = repo.ensure_project(session, project_id)
    tasks = [t for t in payload.get("tasks") or [] if isinstance(t, dict) and "id" in t]
    outcomes = Counter(repo.upsert_task(session, project, t) for t in tasks)
    return ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "no tasks"


def _refresh_project(session: Session, payload: Mapping[str, Any], project_id: int) -> None:
    """Every event carries the project; keep its title and label config current."""
    project = repo.ensure_project(session, project_id)
    body = payload.get("project")
    if isinstance(body, dict):
        project.title = body.get("title") or project.title
        if isinstance(body.get("label_config"), str):
            repo.set_label_config(session, project, body["label_config"])


def _apply_project(session: Session, project_id: int) -> str:
    project = repo.ensure_project(session, project_id)
    return "project updated" if project.config_error is None else "unsupported config"


def apply_event(session: Session, event: InboxEvent, report: ApplyReport) -> None:
    """Apply one stored event inside the caller's transaction and mark it applied."""
    payload, pid, action = event.payload, event.project_id, event.action
    if action in HANDLED_ACTIONS and pid is not None:
        _refresh_project(session, payload, pid)
    if action not in HANDLED_ACTIONS or pid is None:
        outcome = "ignored: action not handled"
    elif action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        outcome = _apply_annotation(session, payload, pid)
    elif action == "ANNOTATIONS_DELETED":
        outcome = _apply_deleted(session, payload, event)
    elif action == "TASKS_CREATED":
        outcome = _apply_tasks(session, payload, pid)
    elif action == "PROJECT_UPDATED":
        outcome = _apply_project(session, pid)
    else:  # START_TRAINING
        repo.ensure_project(session, pid)
        report.train_requested.add(pid)
        outcome = "train requested"
    event.applied_at, event.outcome = utcnow(), outcome
    report.applied[(pid, action)] += 1
    report.outcomes[outcome.split(":")[0]] += 1


def _apply_guarded(session: Session, event: InboxEvent, report: ApplyReport) -> None:
    """Apply one event in a savepoint; one that cannot be applied is marked and skipped.

    Skipping loses nothing: the next reconcile reads the same state from Label Studio.
    """
    try:
        with session.begin_nested():
            apply_event(session, event, report)
    except Exception as exc:  # a poison event must not block every later one
        log.exception("inbox event %d (%s) could not be applied", event.id, event.action)
        event.applied_at, event.outcome = utcnow(), f"error: {type(exc).__name__}"
        report.outcomes["error"] += 1


def apply_pending(store: Store, *, batch: int = 500, project_id: int | None = None) -> ApplyReport:
    """Apply every stored, unapplied event in arrival order, one transaction per batch.

    Args:
        store: the state store.
        batch: events per transaction.
        project_id: apply only this project's events (others stay pending).
    """
    report = ApplyReport()
    while True:
        with store.session() as session:
            events = repo.pending_events(session, limit=batch, project_id=project_id)
            for event in events:
                _apply_guarded(session, event, report)
        if len(events) < batch:
            break
    if report.total:
        log.info("inbox applied %d events: %s", report.total, dict(report.outcomes))
    return report


class InboxWorker:
    """A daemon thread that applies the inbox soon after each delivery (embedded mode)."""

    def __init__(
        self,
        store: Store,
        *,
        on_applied: Callable[[ApplyReport], None] | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self._store, self._on_applied, self._interval = store, on_applied, interval_s
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="labelloop-inbox", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                report = apply_pending(self._store)
            except Exception:  # the worker must outlive one bad batch; the event stays pending
                log.exception("applying the inbox failed; will retry")
                continue
            if report.total and self._on_applied is not None:
                self._on_applied(report)
