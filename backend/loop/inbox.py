"""The webhook inbox: accept a delivery in one durable write, apply it later.

Label Studio sends webhooks synchronously inside the annotator's save request, with a 1 s
timeout and no retry. So ``/webhook`` only validates and stores; :func:`apply_pending` (run by the
worker thread, by ``labelloop sync`` and at the start of every cycle) turns stored events into task
and annotation rows. Applying is idempotent and order-safe (see :mod:`backend.store.repo`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from backend.loop import ingest
from backend.store import repo
from backend.store.db import Store, is_transient
from backend.store.models import InboxEvent, Project, utcnow

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


#: The largest id the store holds (a signed 64-bit column).
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]


class BadEvent(ValueError):
    """A webhook body that is not a Label Studio event we can read."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ProjectRef(_Open):
    id: Id
    title: str | None = None
    label_config: str | None = None


class Ref(_Open):
    id: Id


class AnnotationRef(_Open):
    id: Id
    task: Id | None = None
    result: list[Any] | None = None


class WebhookHead(_Open):
    """What every webhook delivery has: the action and (for the actions we handle) the project."""

    action: str = Field(min_length=1, max_length=100)
    project: ProjectRef | Id | None = None


class WebhookEvent(WebhookHead):
    """A webhook of an action we handle: the parts the inbox reads, typed and bounded."""

    annotation: AnnotationRef | None = None
    task: Ref | None = None
    tasks: list[Ref] | None = None
    annotations: list[Ref] | None = None


@dataclass(frozen=True)
class ParsedEvent:
    action: str
    project_id: int | None
    payload: dict[str, Any]


def _validated(model: type[WebhookHead], payload: dict[str, Any]) -> WebhookHead:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadEvent(f"'{where}': {first['msg']}") from None


def parse_event(payload: Any) -> ParsedEvent:
    """Validate the parts of a webhook body we rely on; the rest is kept as it came."""
    if not isinstance(payload, dict):
        raise BadEvent("webhook body must be a JSON object")
    head = _validated(WebhookHead, payload)
    if head.action in HANDLED_ACTIONS:
        head = _validated(WebhookEvent, payload)
    project = head.project
    project_id = project.id if isinstance(project, ProjectRef) else project
    if head.action in HANDLED_ACTIONS and project_id is None:
        raise BadEvent(f"{head.action} event has no 'project.id'")
    return ParsedEvent(action=head.action, project_id=project_id, payload=payload)


@dataclass
class ApplyReport:
    applied: Counter[tuple[int | None, str]] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    train_requested: set[int] = field(default_factory=set)
    #: Events set aside in this pass (they failed deterministically).
    set_aside: int = 0
    #: Transactions rolled back and tried again after a transient database error.
    retries: int = 0
    #: The pass stopped on a persisting transient error; events are still pending.
    deferred: bool = False

    def merge(self, other: ApplyReport) -> None:
        """Add what ``other`` (one committed transaction) applied to this report."""
        self.applied.update(other.applied)
        self.outcomes.update(other.outcomes)
        self.train_requested |= other.train_requested
        self.set_aside += other.set_aside

    @property
    def total(self) -> int:
        return sum(self.applied.values())


def _apply_annotation(
    session: Session, payload: Mapping[str, Any], project: Project, ahead: repo.ReadAhead | None
) -> str:
    annotation = payload.get("annotation")
    if not isinstance(annotation, dict) or "id" not in annotation:
        return "ignored: no annotation"
    task = payload.get("task")
    task_id = annotation.get("task") or (task.get("id") if isinstance(task, dict) else None)
    if task_id is None:
        return "ignored: no task id"
    if isinstance(task, dict) and "id" in task:
        ingest.upsert_task(session, project, task, ahead=ahead)
    return ingest.upsert_annotation(session, project, int(task_id), annotation, ahead=ahead)


def _apply_deleted(session: Session, payload: Mapping[str, Any], event: InboxEvent) -> str:
    items = payload.get("annotations") or []
    ids = [int(a["id"]) for a in items if isinstance(a, dict) and "id" in a]
    deleted = repo.delete_annotations(
        session, ids, project_id=event.project_id, at=event.received_at
    )
    return f"deleted {deleted}"


def _apply_tasks(
    session: Session, payload: Mapping[str, Any], project: Project, ahead: repo.ReadAhead | None
) -> str:
    tasks = [t for t in payload.get("tasks") or [] if isinstance(t, dict) and "id" in t]
    outcomes = Counter(ingest.upsert_task(session, project, t, ahead=ahead) for t in tasks)
    return ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "no tasks"


def _refresh_project(session: Session, payload: Mapping[str, Any], project: Project) -> None:
    """Every event carries the project; keep its title and label config current."""
    body = payload.get("project")
    if isinstance(body, dict):
        title = body.get("title")
        project.title = title[:500] if isinstance(title, str) and title else project.title
        if isinstance(body.get("label_config"), str):
            ingest.set_label_config(session, project, body["label_config"])


def _apply_to(
    session: Session,
    event: InboxEvent,
    project: Project,
    report: ApplyReport,
    ahead: repo.ReadAhead | None,
) -> str:
    payload, action = event.payload, event.action
    _refresh_project(session, payload, project)
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        return _apply_annotation(session, payload, project, ahead)
    if action == "ANNOTATIONS_DELETED":
        return _apply_deleted(session, payload, event)
    if action == "TASKS_CREATED":
        return _apply_tasks(session, payload, project, ahead)
    if action == "PROJECT_UPDATED":
        return "project updated" if project.config_error is None else "unsupported config"
    report.train_requested.add(project.id)  # START_TRAINING
    return "train requested"


def apply_event(
    session: Session,
    event: InboxEvent,
    report: ApplyReport,
    ahead: repo.ReadAhead | None = None,
) -> None:
    """Apply one stored event inside the caller's transaction and mark it applied (``ahead``:
    the rows its upserts look up, read ahead for its run of events).

    Events of projects this backend was never set up for change nothing (they are only stored
    when the project was known; one removed since is skipped the same way).
    """
    pid, action = event.project_id, event.action
    project = session.get(Project, pid) if pid is not None else None
    if action not in HANDLED_ACTIONS or pid is None:
        outcome = "ignored: action not handled"
    elif project is None:
        outcome = "ignored: project not set up"
    else:
        outcome = _apply_to(session, event, project, report, ahead)
    event.applied_at, event.outcome = utcnow(), outcome
    report.applied[(pid, action)] += 1
    report.outcomes[outcome.split(":")[0]] += 1


class TransientError(Exception):
    """Applying stopped on a transient database error; the events stay pending."""


#: Pending events read at a time inside one apply transaction.
CHUNK = 16


class _EventFailed(Exception):
    """An event applied without a savepoint failed; its transaction is rolled back."""

    def __init__(self, event_id: int) -> None:
        super().__init__(f"inbox event {event_id} failed")
        self.event_id = event_id


def _apply_fast(
    session: Session, event: InboxEvent, report: ApplyReport, ahead: repo.ReadAhead | None
) -> None:
    """Apply one event with no savepoint of its own (the common case: nothing fails).

    A failure rolls the whole transaction back (:class:`_EventFailed`, or :class:`TransientError`
    for a transient database error); the caller then applies the same events again, each in a
    savepoint (:func:`_apply_guarded`), so only the event that fails is set aside.
    """
    try:
        apply_event(session, event, report, ahead)
    except Exception as exc:
        if is_transient(exc):
            raise TransientError(str(exc)) from exc
        raise _EventFailed(event.id) from exc


def _apply_guarded(session: Session, event: InboxEvent, report: ApplyReport) -> None:
    """Apply one event in a savepoint; one that fails deterministically is set aside.

    A transient database error is raised as :class:`TransientError` (the caller rolls the batch
    back and tries again later): such an event is never set aside. Setting one aside loses
    nothing either: the next reconcile reads the same state from Label Studio, and
    ``labelloop inbox retry`` applies it again.
    """
    try:
        with session.begin_nested():
            apply_event(session, event, report)
    except Exception as exc:
        if is_transient(exc):
            raise TransientError(str(exc)) from exc
        log.exception("inbox event %d (%s) could not be applied", event.id, event.action)
        event.set_aside_at, event.outcome = utcnow(), f"error: {type(exc).__name__}"
        report.outcomes["error"] += 1
        report.set_aside += 1


def _pending_in_chunks(
    session: Session, *, limit: int, project_id: int | None
) -> Iterator[list[InboxEvent]]:
    """At most ``limit`` pending events, oldest first, read :data:`CHUNK` at a time."""
    after = 0
    while limit > 0:
        chunk = repo.pending_events(
            session, limit=min(CHUNK, limit), project_id=project_id, after=after
        )
        if chunk:
            yield chunk
        if len(chunk) < min(CHUNK, limit):
            return
        limit, after = limit - len(chunk), chunk[-1].id


def _an_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_ahead(session: Session, events: list[InboxEvent]) -> repo.ReadAhead:
    """The task and annotation rows ``events`` name, read in one query per table."""
    tasks: set[int | None] = set()
    annotations: set[int | None] = set()
    for event in events:
        payload = event.payload if isinstance(event.payload, dict) else {}
        task, annotation = payload.get("task"), payload.get("annotation")
        if isinstance(task, dict):
            tasks.add(_an_id(task.get("id")))
        if isinstance(annotation, dict):
            annotations.add(_an_id(annotation.get("id")))
            tasks.add(_an_id(annotation.get("task")))
        listed = payload.get("tasks") if event.action == "TASKS_CREATED" else None
        for item in listed if isinstance(listed, list) else ():
            if isinstance(item, dict):
                tasks.add(_an_id(item.get("id")))
    return repo.ReadAhead.read(
        session,
        (t for t in tasks if t is not None),
        (a for a in annotations if a is not None),
    )


def _pending_read_ahead(
    session: Session, *, limit: int, project_id: int | None, guard_through: int
) -> Iterator[tuple[InboxEvent, repo.ReadAhead | None]]:
    """Pending events (as :func:`_pending_in_chunks`), each with the rows its chunk names read
    ahead; None for a chunk that starts at or before ``guard_through`` (applied in savepoints,
    whose rollback would leave read-ahead rows stale)."""
    for chunk in _pending_in_chunks(session, limit=limit, project_id=project_id):
        ahead = None if chunk[0].id <= guard_through else _read_ahead(session, chunk)
        for event in chunk:
            yield event, ahead


def _apply_batch(
    store: Store,
    report: ApplyReport,
    *,
    batch: int,
    budget_s: float,
    project_id: int | None,
    guard_through: int = 0,
) -> int:
    """Apply pending events in one short write transaction; returns how many it looked at.

    Events are read :data:`CHUNK` at a time, so a transaction that stops at its time budget after
    a few events has not decoded the payloads of ``batch`` of them; the task and annotation rows
    a chunk's events name are read with it, one query per table (:class:`repo.ReadAhead`).
    ``report`` only learns what was committed. Events with ids up to ``guard_through`` (one that
    failed before, and those before it) are applied each in a savepoint, looking their rows up
    one by one, and the transaction ends after them; the others without one
    (:func:`_apply_fast`).
    """
    with store.session() as session:  # a plain read: no write lock while nothing is pending
        if not repo.has_pending(session, project_id=project_id):
            return 0
    done, this = 0, ApplyReport()
    with store.write_session() as session:
        started = time.perf_counter()  # the budget counts from holding the write lock
        pending = _pending_read_ahead(
            session, limit=batch, project_id=project_id, guard_through=guard_through
        )
        for event, ahead in pending:
            guarded = event.id <= guard_through
            if guarded:
                _apply_guarded(session, event, this)
            else:
                _apply_fast(session, event, this, ahead)
            done += 1
            if event.id == guard_through or (
                not guarded and time.perf_counter() - started > budget_s
            ):
                break
    report.merge(this)
    return done


def apply_pending(
    store: Store,
    *,
    batch: int = 200,
    budget_s: float = 0.005,
    project_id: int | None = None,
    retries: int = 5,
    backoff_s: float = 0.05,
    sleep: Callable[[float], None] = time.sleep,
    yield_s: float = 0.002,
) -> ApplyReport:
    """Apply every stored, pending event in arrival order, in short write transactions.

    Each transaction applies at most ``batch`` events or what fits in ``budget_s`` seconds, and
    the next one begins ``yield_s`` after it committed, so a webhook waiting for the write lock
    (in this process or another) takes it then and waits at most about one transaction. A
    transient database error rolls the
    current transaction back and retries it after a growing pause (``backoff_s`` doubling, at
    most ``retries`` times in a row) with half as many events; when it persists the events stay
    pending for the next call.

    Args:
        store: the state store.
        batch: most events per transaction.
        budget_s: seconds after which a transaction commits what it applied so far.
        project_id: apply only this project's events (others stay pending).
        retries: tries in a row after a transient error before giving up for now.
        backoff_s: the first pause after a transient error.
        sleep: how to pause after a transient error (tests pass a recorder).
        yield_s: the pause between two transactions, for other writers (0: none).
    """
    report, failures, guard_through = ApplyReport(), 0, 0
    while True:
        try:
            seen = _apply_batch(
                store,
                report,
                batch=batch,
                budget_s=budget_s,
                project_id=project_id,
                guard_through=guard_through,
            )
        except _EventFailed as failed:  # rolled back: again, each event in a savepoint
            guard_through = failed.event_id
            continue
        except Exception as exc:
            if not isinstance(exc, TransientError) and not is_transient(exc):
                raise
            report.retries += 1
            failures += 1
            batch = max(1, batch // 2)
            if failures > retries:
                log.warning("inbox: a transient database error persists; events stay pending")
                report.deferred = True
                break
            sleep(backoff_s * 2 ** (failures - 1))
            continue
        failures, guard_through = 0, 0
        if seen == 0:
            break
        if yield_s > 0:
            time.sleep(yield_s)
    if report.total or report.retries:
        log.info(
            "inbox applied %d events: %s (%d transient retries)",
            report.total,
            dict(report.outcomes),
            report.retries,
        )
    return report


def retry_set_aside(store: Store, *, project_id: int | None = None) -> int:
    """Put set-aside events back in the queue (``labelloop inbox retry``); returns how many."""
    with store.session() as session:
        return repo.requeue_set_aside(session, project_id=project_id)


class InboxWorker:
    """A daemon thread that applies the inbox soon after each delivery (embedded mode)."""

    def __init__(
        self,
        store: Store,
        *,
        on_applied: Callable[[ApplyReport], None] | None = None,
        interval_s: float = 5.0,
        gather_s: float = 0.05,
    ) -> None:
        self._store, self._on_applied, self._interval = store, on_applied, interval_s
        # After a wake-up, wait this long for more deliveries: one transaction applies them all,
        # instead of one write (and one fsync) competing with each webhook's insert.
        self._gather = gather_s
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
            if self._wake.wait(self._interval):
                self._stop.wait(self._gather)
            self._wake.clear()
            try:
                report = apply_pending(self._store)
            except Exception:  # the worker must outlive one bad batch; the event stays pending
                log.exception("applying the inbox failed; will retry")
                continue
            if (report.total or report.set_aside or report.retries) and self._on_applied:
                self._on_applied(report)
