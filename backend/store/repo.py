"""Repository functions over the state store: the only code that writes its rows.

The ordering rule lives here: a task or annotation row is only overwritten by data whose Label
Studio ``updated_at`` is at least as new as what is stored, and a deleted annotation stays deleted
unless a full reconcile sees it in Label Studio again. That makes applying events idempotent and
safe in any order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backend.store.models import Annotation, InboxEvent, ModelVersion, Project, Task, utcnow

Outcome = Literal["created", "updated", "unchanged", "stale", "ignored"]
#: The largest id a BigInteger column holds.
MAX_ID = 2**63 - 1


def parse_ts(value: Any) -> datetime | None:
    """Label Studio's ISO timestamps (``...Z`` or with offset) as aware UTC datetimes."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _newer_or_equal(incoming: datetime | None, stored: datetime | None) -> bool:
    return stored is None or incoming is None or incoming >= stored


# ---------------------------------------------------------------- projects


def ensure_project(session: Session, project_id: int) -> Project:
    """The project row, created bare when a webhook or sync names an unknown project."""
    project = session.get(Project, project_id)
    if project is None:
        project = Project(id=project_id, labels=[], settings={})
        session.add(project)
        session.flush()
    return project


def store_label_config(
    session: Session,
    project: Project,
    label_config: str,
    *,
    parsed: Mapping[str, Any] | None,
    error: str | None,
) -> None:
    """Store a project's label config with what parsing it gave: its fields, or why it is refused.

    Args:
        parsed: ``from_name``, ``to_name``, ``value_key``, ``labels`` and ``multiple`` of a
            supported config; None with ``error`` for an unsupported one (kept with its reason).
    """
    project.label_config = label_config
    project.config_error = error
    if parsed is None:
        return
    project.from_name, project.to_name = parsed["from_name"], parsed["to_name"]
    project.value_key, project.labels = parsed["value_key"], list(parsed["labels"])
    project.multiple = bool(parsed["multiple"])


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.id)))


# ---------------------------------------------------------------- tasks and annotations


@dataclass
class ReadAhead:
    """Task and annotation rows read ahead for a run of events, in one query per table, so the
    upserts that follow look each one up here instead of querying (and autoflushing) per row.

    Valid inside one transaction with no savepoint rolled back: a row the upserts create is
    recorded here as it is added, and a row read as absent stays absent until then.
    """

    tasks: dict[int, Task | None] = field(default_factory=dict)
    annotations: dict[int, Annotation | None] = field(default_factory=dict)

    @classmethod
    def read(
        cls, session: Session, task_ids: Iterable[int], annotation_ids: Iterable[int]
    ) -> ReadAhead:
        """Read the named rows (ids not stored are recorded as absent)."""
        ahead = cls()
        wanted_tasks, wanted_annotations = set(task_ids), set(annotation_ids)
        if wanted_tasks:
            ahead.tasks = dict.fromkeys(wanted_tasks)
            for task in session.scalars(select(Task).where(Task.id.in_(wanted_tasks))):
                ahead.tasks[task.id] = task
        if wanted_annotations:
            ahead.annotations = dict.fromkeys(wanted_annotations)
            stmt = select(Annotation).where(Annotation.id.in_(wanted_annotations))
            for annotation in session.scalars(stmt):
                ahead.annotations[annotation.id] = annotation
        return ahead

    def task(self, session: Session, task_id: int) -> Task | None:
        if task_id not in self.tasks:
            self.tasks[task_id] = session.get(Task, task_id)
        return self.tasks[task_id]

    def annotation(self, session: Session, annotation_id: int) -> Annotation | None:
        if annotation_id not in self.annotations:
            self.annotations[annotation_id] = session.get(Annotation, annotation_id)
        return self.annotations[annotation_id]


def _task(session: Session, task_id: int, ahead: ReadAhead | None) -> Task | None:
    return ahead.task(session, task_id) if ahead is not None else session.get(Task, task_id)


def upsert_task(
    session: Session,
    project: Project,
    data: Mapping[str, Any],
    *,
    image_ref: str | None,
    ahead: ReadAhead | None = None,
    listed: bool = False,
) -> Outcome:
    """Insert or refresh one task from Label Studio's task JSON (``image_ref``: its image;
    ``ahead``: rows read ahead in this transaction; ``listed``: the JSON is a full listing's,
    annotations included, so its stamp is also recorded as ``ls_listed_updated_at``).

    A task stored under another project is left alone ("ignored"): an event of one project
    never changes another project's rows.
    """
    task_id = int(data["id"])
    ref = image_ref
    updated = parse_ts(data.get("updated_at"))
    row = _task(session, task_id, ahead)
    if row is not None and row.project_id != project.id:
        return "ignored"
    if row is None:
        row = Task(
            id=task_id,
            project_id=project.id,
            image_ref=ref,
            data=data.get("data"),
            ls_created_at=parse_ts(data.get("created_at")),
            ls_updated_at=updated,
            ls_listed_updated_at=updated if listed else None,
        )
        session.add(row)
        if ahead is not None:
            ahead.tasks[task_id] = row
        return "created"
    if not _newer_or_equal(updated, row.ls_updated_at):
        return "stale"
    changed = row.image_ref != ref or row.deleted or row.data != data.get("data", row.data)
    if row.image_ref != ref:
        row.image_error = None
    row.image_ref, row.deleted, row.ls_updated_at = ref, False, updated or row.ls_updated_at
    row.data = data.get("data", row.data)
    if listed:
        row.ls_listed_updated_at = updated
    return "updated" if changed else "unchanged"


def upsert_annotation(
    session: Session,
    project: Project,
    task_id: int,
    data: Mapping[str, Any],
    *,
    labels: list[str],
    from_reconcile: bool = False,
    ahead: ReadAhead | None = None,
) -> Outcome:
    """Insert or update one annotation (``labels``: the choices it gives; ``ahead``: rows read
    ahead in this transaction), never letting older data overwrite newer data.

    A deleted annotation is only brought back by a reconcile (Label Studio still lists it); a
    webhook about it that arrives after its deletion is ignored, and so is one about an
    annotation or a task of another project.
    """
    ann_id = int(data["id"])
    task = _task(session, task_id, ahead)
    if task is not None and task.project_id != project.id:
        return "ignored"
    updated = parse_ts(data.get("updated_at")) or parse_ts(data.get("created_at"))
    fields = {
        "task_id": task_id,
        "annotator": _annotator(data.get("completed_by")),
        "labels": labels,
        "was_cancelled": bool(data.get("was_cancelled", False)),
        "ls_created_at": parse_ts(data.get("created_at")),
        "ls_updated_at": updated,
    }
    row = (
        ahead.annotation(session, ann_id) if ahead is not None else session.get(Annotation, ann_id)
    )
    if row is None:
        row = Annotation(id=ann_id, project_id=project.id, **fields)
        session.add(row)
        if ahead is not None:
            ahead.annotations[ann_id] = row
        return "created"
    if row.project_id != project.id:
        return "ignored"
    if row.deleted and not from_reconcile:
        return "ignored"
    if not _newer_or_equal(updated, row.ls_updated_at):
        return "stale"
    same = all(getattr(row, key) == value for key, value in fields.items()) and not row.deleted
    for key, value in fields.items():
        setattr(row, key, value)
    row.deleted, row.deleted_at = False, None
    return "unchanged" if same else "updated"


def _annotator(value: Any) -> int | None:
    """The annotator's user id, or None when it is not a positive 64-bit integer."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        user = int(value)
    except ValueError:
        return None
    return user if 0 < user <= MAX_ID else None


def delete_annotations(
    session: Session,
    ids: Iterable[int],
    *,
    project_id: int | None = None,
    at: datetime | None = None,
) -> int:
    """Mark annotations deleted (tombstones keep the history); returns how many changed.

    With ``project_id`` only that project's annotations are touched.
    """
    wanted = [int(i) for i in ids]
    if not wanted:
        return 0
    stmt = update(Annotation).where(Annotation.id.in_(wanted), Annotation.deleted.is_(False))
    if project_id is not None:
        stmt = stmt.where(Annotation.project_id == project_id)
    result = session.execute(stmt.values(deleted=True, deleted_at=at or utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


def live_annotations(session: Session, project_id: int) -> list[Annotation]:
    """Annotations that count as labels: not deleted, not skipped."""
    stmt = select(Annotation).where(
        Annotation.project_id == project_id,
        Annotation.deleted.is_(False),
        Annotation.was_cancelled.is_(False),
    )
    return list(session.scalars(stmt.order_by(Annotation.task_id, Annotation.id)))


def live_tasks(session: Session, project_id: int) -> list[Task]:
    stmt = select(Task).where(Task.project_id == project_id, Task.deleted.is_(False))
    return list(session.scalars(stmt.order_by(Task.id)))


@dataclass(frozen=True)
class ProjectCounts:
    tasks: int
    annotations: int
    labeled_tasks: int
    deleted_annotations: int
    pending_events: int
    set_aside_events: int


def project_counts(session: Session, project_id: int) -> ProjectCounts:
    def count(stmt: Any) -> int:
        return int(session.scalar(stmt) or 0)

    ann = select(func.count()).select_from(Annotation).where(Annotation.project_id == project_id)
    return ProjectCounts(
        tasks=count(
            select(func.count())
            .select_from(Task)
            .where(Task.project_id == project_id, Task.deleted.is_(False))
        ),
        annotations=count(ann.where(Annotation.deleted.is_(False))),
        labeled_tasks=count(
            select(func.count(func.distinct(Annotation.task_id))).where(
                Annotation.project_id == project_id,
                Annotation.deleted.is_(False),
                Annotation.was_cancelled.is_(False),
            )
        ),
        deleted_annotations=count(ann.where(Annotation.deleted.is_(True))),
        pending_events=count(_pending(project_id, select(func.count()).select_from(InboxEvent))),
        set_aside_events=count(
            select(func.count())
            .select_from(InboxEvent)
            .where(InboxEvent.project_id == project_id, InboxEvent.set_aside_at.is_not(None))
        ),
    )


# ---------------------------------------------------------------- inbox


def delivery_key(body: bytes) -> str:
    """Identity of a delivery: the same bytes delivered twice are the same event."""
    return hashlib.sha256(body).hexdigest()


def record_delivery(
    session: Session, *, key: str, action: str, project_id: int | None, payload: dict[str, Any]
) -> bool:
    """Store a webhook delivery; returns False when the same delivery was already stored.

    One ``INSERT ... ON CONFLICT (delivery_key) DO NOTHING``: no read first, no savepoint, no
    ORM object (this runs inside every webhook request), and a delivery stored at the same time
    by another process is a duplicate, not an error.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(InboxEvent)
        .values(delivery_key=key, action=action, project_id=project_id, payload=payload)
        .on_conflict_do_nothing(index_elements=["delivery_key"])
        .returning(InboxEvent.id)
    )
    return session.execute(stmt).scalar() is not None


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery to store: its identity (:func:`delivery_key`), action, project, and
    the size of the body it came in (what a batch of them weighs)."""

    key: str
    action: str
    project_id: int
    payload: dict[str, Any]
    size: int = 0


def record_deliveries(
    connection: Connection,
    deliveries: Sequence[Delivery],
    *,
    known_projects: Collection[int] = (),
) -> list[bool | None]:
    """Store each delivery of a project this backend was set up for: True when stored, False
    for a duplicate of one stored before (or earlier in ``deliveries``), None for a project
    that is not known (nothing stored).

    One query reads which of the batch's projects are known (none when ``known_projects``, what
    the caller saw before, holds them all) and one multi-row ``INSERT ... ON CONFLICT
    (delivery_key) DO NOTHING RETURNING delivery_key`` stores the rest: the keys it returns were
    stored, the others were there already. Like :func:`record_delivery` it reads nothing first,
    and a delivery stored at the same time by another process is a duplicate, not an error.

    The rows are inserted in key order, whatever order they came in: two transactions holding
    some of the same deliveries (a retried webhook reaching two server processes) then take the
    key index's locks in the same order, and one waits for the other instead of both deadlocking.
    """
    asked = {d.project_id for d in deliveries} - set(known_projects)
    known = set(known_projects)
    if asked:
        known |= set(connection.execute(select(Project.id).where(Project.id.in_(asked))).scalars())
    rows: dict[str, dict[str, Any]] = {}
    for d in sorted(deliveries, key=lambda d: d.key):
        if d.project_id in known and d.key not in rows:
            rows[d.key] = {
                "delivery_key": d.key,
                "action": d.action,
                "project_id": d.project_id,
                "payload": d.payload,
            }
    stored: set[str] = set()
    if rows:
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        insert = (
            dialect.insert(InboxEvent)
            .on_conflict_do_nothing(index_elements=["delivery_key"])
            .returning(InboxEvent.delivery_key)
        )
        stored = set(connection.execute(insert, list(rows.values())).scalars())
    outcomes: list[bool | None] = []
    for d in deliveries:
        if d.project_id not in known:
            outcomes.append(None)
        else:
            outcomes.append(d.key in stored)
            stored.discard(d.key)  # a second delivery of the same key in this batch: a duplicate
    return outcomes


def _pending(project_id: int | None, stmt: Any) -> Any:
    stmt = stmt.where(InboxEvent.applied_at.is_(None), InboxEvent.set_aside_at.is_(None))
    return stmt if project_id is None else stmt.where(InboxEvent.project_id == project_id)


def pending_events(
    session: Session, *, limit: int = 500, project_id: int | None = None, after: int = 0
) -> list[InboxEvent]:
    """Events stored and neither applied nor set aside, oldest first (ids above ``after``)."""
    stmt = _pending(project_id, select(InboxEvent)).where(InboxEvent.id > after)
    return list(session.scalars(stmt.order_by(InboxEvent.id).limit(limit)))


def has_pending(session: Session, *, project_id: int | None = None) -> bool:
    """Whether any event is stored and neither applied nor set aside (reads no payload)."""
    return session.scalar(_pending(project_id, select(InboxEvent.id)).limit(1)) is not None


def set_aside_count(session: Session, *, project_id: int | None = None) -> int:
    stmt = select(func.count()).select_from(InboxEvent).where(InboxEvent.set_aside_at.is_not(None))
    if project_id is not None:
        stmt = stmt.where(InboxEvent.project_id == project_id)
    return int(session.scalar(stmt) or 0)


def requeue_set_aside(session: Session, *, project_id: int | None = None) -> int:
    """Make set-aside events pending again; returns how many."""
    stmt = update(InboxEvent).where(InboxEvent.set_aside_at.is_not(None))
    if project_id is not None:
        stmt = stmt.where(InboxEvent.project_id == project_id)
    result = session.execute(stmt.values(set_aside_at=None, outcome=None))
    return int(getattr(result, "rowcount", 0) or 0)


def project_known(session: Session, project_id: int) -> bool:
    """Whether this backend was set up for the project (``/setup``, connect or a sync)."""
    return session.scalar(select(Project.id).where(Project.id == project_id)) is not None


def project_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Project)) or 0)


# ---------------------------------------------------------------- model versions


def current_model(session: Session, project_id: int) -> ModelVersion | None:
    project = session.get(Project, project_id)
    if project is None or not project.model_version:
        return None
    return session.scalar(select(ModelVersion).where(ModelVersion.version == project.model_version))
