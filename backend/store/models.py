"""SQLAlchemy 2 models of the state store.

Label Studio is the source of truth for tasks and annotations; these tables are our durable copy,
kept equal to it by webhooks (fast path) and by reconcile (the guarantee). Ids are Label Studio's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    title: Mapped[str | None] = mapped_column(String(500))
    label_config: Mapped[str | None] = mapped_column(Text)
    from_name: Mapped[str | None] = mapped_column(String(200))
    to_name: Mapped[str | None] = mapped_column(String(200))
    value_key: Mapped[str | None] = mapped_column(String(200))
    labels: Mapped[list[Any]] = mapped_column(default=list)
    multiple: Mapped[bool] = mapped_column(Boolean, default=False)
    config_error: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_version: Mapped[str | None] = mapped_column(String(200))
    ls_hostname: Mapped[str | None] = mapped_column(String(500))
    last_synced_at: Mapped[datetime | None]
    #: The newest task ``updated_at`` a sync listed: where the next incremental sync starts, on
    #: Label Studio's clock (ours may differ by any amount).
    ls_synced_until: Mapped[datetime | None]
    #: When ``ls_synced_until`` took its value (our clock, after the listing that saw it).
    ls_cursor_seen_at: Mapped[datetime | None]
    #: When a sync last started checking the tasks just before ``ls_synced_until`` (our clock).
    ls_window_checked_at: Mapped[datetime | None]
    #: When a sync last listed every task (our clock): deletions only show in a full pass.
    last_full_sync_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_project_deleted", "project_id", "deleted"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_ref: Mapped[str | None] = mapped_column(Text)
    image_error: Mapped[str | None] = mapped_column(Text)
    # Label Studio's task data as last seen: review flags PATCH it, and PATCH replaces it whole.
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    ls_created_at: Mapped[datetime | None]
    ls_updated_at: Mapped[datetime | None]
    # The stamp of the last full listing of the task, annotations included. Webhooks write
    # ``ls_updated_at`` too, from payloads that may lack annotations (a task created by an import
    # with annotations), so only this one says the store holds the task as Label Studio listed it.
    ls_listed_updated_at: Mapped[datetime | None]
    synced_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Annotation(Base):
    __tablename__ = "annotations"
    __table_args__ = (
        Index("ix_annotations_project_deleted", "project_id", "deleted"),
        Index("ix_annotations_task", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(BigInteger)
    annotator: Mapped[int | None] = mapped_column(BigInteger)
    labels: Mapped[list[Any]] = mapped_column(default=list)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    ls_created_at: Mapped[datetime | None]
    ls_updated_at: Mapped[datetime | None]
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted_at: Mapped[datetime | None]
    synced_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class InboxEvent(Base):
    """One webhook delivery, stored before it is acknowledged and applied later."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_pending", "applied_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_key: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None]
    #: When applying it failed deterministically; it then waits for ``labelloop inbox retry``.
    set_aside_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(Text)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (Index("ix_model_versions_project", "project_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(Text)
    backbone: Mapped[str] = mapped_column(String(200))
    n_labels: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Cycle(Base):
    """One retrain-and-requeue cycle of a project: queued -> running -> succeeded | failed.

    A project has at most one queued cycle: every trigger that arrives while one waits is folded
    into it. There is no foreign key to ``projects``: a cycle can be requested (API, CLI) before the
    first reconcile has created the project's row.
    """

    __tablename__ = "cycles"
    __table_args__ = (
        Index("ix_cycles_project", "project_id", "id"),
        Index("ix_cycles_state", "state", "project_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(BigInteger)
    trigger: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(100))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stage_timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_version: Mapped[str | None] = mapped_column(String(200))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    due_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]


class LoopState(Base):
    """Per-project loop state: the debounce counter and the lease that keeps cycles exclusive.

    ``schedule``/``schedule_next_at`` keep a recurring schedule's phase across restarts. The
    lease is taken with one conditional UPDATE (free or expired -> ours), so two processes can
    never both hold it; a heartbeat renews it and a crashed holder's lease simply expires.
    """

    __tablename__ = "loop_state"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    changes: Mapped[int] = mapped_column(Integer, default=0)
    triggered_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_cycle_id: Mapped[int | None] = mapped_column(Integer)
    lease_expires_at: Mapped[datetime | None]
    schedule: Mapped[str | None] = mapped_column(String(200))  # the recurring trigger, as text
    schedule_next_at: Mapped[datetime | None]  # its next run (kept across restarts)


class ReviewFlag(Base):
    """A task flagged for review (suspected label error or annotator disagreement).

    ``pushed`` says the flag is written into the task's data in Label Studio (where the review
    views filter and order on it); ``reviewed_at`` is set when an annotation of the task was
    saved after ``flagged_at``, which takes the task out of the queue. ``outcome`` is what the
    reviewer said: "confirmed" (the label was changed: the flag was right) or "rejected" (saved
    unchanged: the label was right); ``resolved_label`` is the label then, which is not flagged
    again while it stays. ``cycle_id`` is the cycle that raised the flag.
    """

    __tablename__ = "review_flags"
    __table_args__ = (Index("ix_review_flags_project", "project_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(BigInteger)
    task_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    annotated_label: Mapped[str | None] = mapped_column(String(500))
    model_label: Mapped[str | None] = mapped_column(String(500))
    model_confidence: Mapped[float | None] = mapped_column(Float)
    flagged_at: Mapped[datetime] = mapped_column(default=utcnow)
    reviewed_at: Mapped[datetime | None]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    pushed: Mapped[bool] = mapped_column(Boolean, default=False)
    cycle_id: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(String(16))
    resolved_label: Mapped[str | None] = mapped_column(String(500))


class ProjectSettings(Base):
    """A project's overrides of the ``strategy``, ``model`` and ``loop`` settings (issue 6).

    ``overrides`` holds only the fields whose value differs from the config defaults, as
    ``{section: {field: value}}``; the effective settings are the defaults with these applied.
    No foreign key: settings may be set before the first reconcile creates the project's row.
    """

    __tablename__ = "project_settings"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(200))


class SettingsChange(Base):
    """One change of a project's settings: when, by which token name, and each field's diff.

    ``changes`` is a list of ``{"field": "strategy.batch_size", "before": 100, "after": 50}``.
    """

    __tablename__ = "project_settings_history"
    __table_args__ = (Index("ix_project_settings_history_project", "project_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(BigInteger)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    token_name: Mapped[str] = mapped_column(String(200))
    changes: Mapped[list[Any]] = mapped_column(default=list)


class TaskImage(Base):
    """The content hash of a task's image and the backbone that last embedded it.

    Together they are the key of the task's vector in :class:`backend.model.cache.EmbeddingCache`,
    so the admin preview can score the pool without fetching or embedding any image. ``image_ref``
    is the reference the hash was taken from: while the task still has it, a cycle reuses the hash
    instead of fetching the image again.
    """

    __tablename__ = "task_images"
    __table_args__ = (Index("ix_task_images_project", "project_id"),)

    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project_id: Mapped[int] = mapped_column(BigInteger)
    sha: Mapped[str] = mapped_column(String(64))
    backbone: Mapped[str] = mapped_column(String(200))
    image_ref: Mapped[str | None] = mapped_column(Text)
    embedded_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SelectionPick(Base):
    """One recorded queue position of a push: which arm chose the task, or ``audit``.

    Audit items are uniform random draws from the unlabeled pool (``arm == "audit"``);
    ``predicted`` is the model's label for the task when it was pushed (None before a model
    existed). The next cycle resolves every pending pick: ``labeled`` (the label arrived while this
    push was the live queue; ``label`` and ``correct`` filled) or ``expired`` (it did not).
    Labeled picks wait, ``judged`` False, until the bandit has enough of an arm's to judge it.
    """

    __tablename__ = "selection_picks"
    __table_args__ = (
        Index("ix_selection_picks_project", "project_id", "state", "cycle_id"),
        Index("ix_selection_picks_arm", "project_id", "arm", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(BigInteger)
    cycle_id: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(BigInteger)
    arm: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(200))
    predicted: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    label: Mapped[str | None] = mapped_column(String(500))
    correct: Mapped[bool | None] = mapped_column(Boolean)
    #: True once the bandit used the labeled pick (an arm's pick judged, or a reference label).
    judged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]


class SelectionReward(Base):
    """One arm's reward in one cycle (:class:`strategies.bandit.Reward`), kept for the bandit."""

    __tablename__ = "selection_rewards"
    __table_args__ = (Index("ix_selection_rewards_project", "project_id", "cycle_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(BigInteger)
    cycle_id: Mapped[int] = mapped_column(Integer)
    arm: Mapped[str] = mapped_column(String(32))
    win: Mapped[float] = mapped_column(Float)
    gain: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
