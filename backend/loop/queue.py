"""The labeling queue as Label Studio serves it: a pushed head, the rest kept here, topped up.

"Label All Tasks" with uncertainty sampling serves the unlabeled tasks that have a prediction of
the project's current model version, lowest score first, and every other task in RANDOM order
(measured on Label Studio 1.23.2). It only ever needs the head of the queue, while every pushed
prediction costs at import and again when its version is pruned (Label Studio deletes them row by
row). So a cycle pushes only the first ``strategy.push_top_k`` tasks of its order and stores the
whole order here (:class:`QueueState`, one ``.npz`` per project under ``store.data_dir``):

- :func:`refill` tops the head up under the same version once fewer than half of the pushed
  tasks are left unlabeled, so annotators never reach the random part between two cycles (the
  scheduler calls it after annotation changes; it needs the project's cycle lease, so it never
  races a cycle's push);
- :func:`queue_positions` gives ``/predict`` a task's queue position, answered as its score: when
  Label Studio asks for a task outside the head (opened from the Data Manager), the prediction it
  stores under the current version lands where our queue puts the task.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from backend.files import atomic_write
from backend.labelstudio.client import LabelStudio
from backend.labelstudio.config import LabelConfig
from backend.loop import ingest
from backend.loop.contract import Scored, Trained
from backend.loop.push import LabelStudioPush, QueueItem, add_to_queue, push_queue
from backend.settings import Settings
from backend.store import cycle_records
from backend.store.db import Store
from backend.store.models import Annotation, Project, utcnow
from backend.store.project_settings import effective_settings

log = logging.getLogger(__name__)
#: Seconds a refill may hold the project's lease (one bulk import).
REFILL_LEASE_S = 600.0


@dataclass(frozen=True, eq=False)
class QueueState:
    """A cycle's labeling queue and how much of it Label Studio holds.

    Attributes:
        version: the model version the predictions were pushed under.
        task_ids: (n,) unlabeled tasks in queue order; task ``i`` has position ``i / n``.
        suggested: (n, C) bool, the pre-annotation of each (labels in ``classes`` order).
        classes: the C label names.
        clusters: (n,) cluster per task pushed with it, or None.
        pushed: how many of the first tasks have a prediction of ``version`` in Label Studio.
    """

    version: str
    task_ids: NDArray[np.int64]
    suggested: NDArray[np.bool_]
    classes: tuple[str, ...]
    clusters: NDArray[np.int64] | None
    pushed: int

    @property
    def n(self) -> int:
        return int(self.task_ids.shape[0])

    def items(self, start: int, stop: int) -> list[QueueItem]:
        """The queue entries ``start:stop`` as they are pushed."""
        n = max(1, self.n)
        return [
            QueueItem(
                task_id=int(self.task_ids[i]),
                position=i / n,
                labels=tuple(self.classes[j] for j in np.flatnonzero(self.suggested[i])),
                cluster=int(self.clusters[i]) if self.clusters is not None else None,
            )
            for i in range(start, min(stop, self.n))
        ]


def queue_state(
    version: str,
    items: Sequence[QueueItem],
    classes: Sequence[str],
    *,
    pushed: int,
) -> QueueState:
    """The state of a queue given as :class:`QueueItem` (in queue order)."""
    column = {name: j for j, name in enumerate(classes)}
    suggested = np.zeros((len(items), len(classes)), dtype=bool)
    for row, item in enumerate(items):
        suggested[row, [column[label] for label in item.labels]] = True
    has_clusters = bool(items) and items[0].cluster is not None
    return QueueState(
        version=version,
        task_ids=np.array([item.task_id for item in items], dtype=np.int64),
        suggested=suggested,
        classes=tuple(classes),
        clusters=np.array([item.cluster for item in items], dtype=np.int64)
        if has_clusters
        else None,
        pushed=pushed,
    )


def state_path(settings: Settings, project_id: int) -> Path:
    return settings.store.data_dir / "queues" / f"p{project_id}.npz"


def save_state(settings: Settings, project_id: int, state: QueueState) -> None:
    arrays: dict[str, NDArray[np.generic]] = {
        "version": np.array(state.version),
        "task_ids": state.task_ids,
        "suggested": np.packbits(state.suggested, axis=1),
        "n_classes": np.array(len(state.classes)),
        "classes": np.array(state.classes, dtype=np.str_),
        "pushed": np.array(state.pushed),
    }
    if state.clusters is not None:
        arrays["clusters"] = state.clusters
    with atomic_write(state_path(settings, project_id)) as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def load_state(settings: Settings, project_id: int) -> QueueState | None:
    """The project's stored queue, or None before its first push."""
    path = state_path(settings, project_id)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        n_classes = int(data["n_classes"])
        suggested = np.unpackbits(data["suggested"], axis=1, count=n_classes).astype(bool)
        return QueueState(
            version=str(data["version"]),
            task_ids=data["task_ids"].astype(np.int64),
            suggested=suggested.reshape(len(data["task_ids"]), n_classes),
            classes=tuple(str(c) for c in data["classes"]),
            clusters=data["clusters"].astype(np.int64) if "clusters" in data.files else None,
            pushed=int(data["pushed"]),
        )


def queue_positions(
    settings: Settings, project_id: int, version: str, task_ids: Sequence[int]
) -> dict[int, float]:
    """Queue position in [0, 1) of each of ``task_ids`` in the queue pushed as ``version``
    (tasks not in it, or another version's queue, are left out)."""
    state = load_state(settings, project_id)
    if state is None or state.version != version or not state.n:
        return {}
    order = np.argsort(state.task_ids, kind="stable")
    wanted = np.asarray(list(task_ids), dtype=np.int64)
    slot = np.clip(np.searchsorted(state.task_ids, wanted, sorter=order), 0, state.n - 1)
    rank = order[slot]
    found = state.task_ids[rank] == wanted
    return {int(t): float(r) / state.n for t, r, ok in zip(wanted, rank, found, strict=True) if ok}


def labeled_tasks(store: Store, project_id: int) -> set[int]:
    """Tasks with a live annotation (Label Studio no longer serves them from its queue)."""
    with store.session() as session:
        return set(
            session.scalars(
                select(Annotation.task_id)
                .where(Annotation.project_id == project_id, Annotation.deleted.is_(False))
                .distinct()
            )
        )


def refill_count(state: QueueState, labeled: set[int], top_k: int) -> int:
    """How many more tasks to push so ``top_k`` unlabeled ones are ahead again; 0 while at least
    half of them are left (or the whole order is pushed)."""
    head = state.task_ids[: state.pushed]
    left = int(np.count_nonzero(~np.isin(head, np.fromiter(labeled, np.int64, len(labeled)))))
    if state.pushed >= state.n or left * 2 >= top_k:
        return 0
    return min(top_k - left, state.n - state.pushed)


def refill(
    settings: Settings, store: Store, ls: LabelStudioPush, project_id: int, cfg: LabelConfig
) -> int:
    """Top up the pushed head of the project's queue (see the module docstring); how many
    predictions were added. Call it under the project's lease (:func:`refill_under_lease`)."""
    top_k = settings.strategy.push_top_k
    state = load_state(settings, project_id)
    if top_k is None or state is None:
        return 0
    more = refill_count(state, labeled_tasks(store, project_id), top_k)
    if more == 0:
        return 0
    if ls.get_project(project_id).get("model_version") != state.version:
        return 0  # Label Studio serves another version now; a cycle will push a new head
    items = state.items(state.pushed, state.pushed + more)
    created = add_to_queue(ls, project_id, state.version, items, cfg)
    save_state(settings, project_id, replace(state, pushed=state.pushed + more))
    log.info(
        "project %d: queue %s topped up by %d (%d of %d pushed)",
        project_id,
        state.version,
        created,
        state.pushed + more,
        state.n,
    )
    return created


def refill_under_lease(
    store: Store, project_id: int, work: Callable[[], int], *, ttl_s: float = REFILL_LEASE_S
) -> int | None:
    """Run ``work`` holding the project's cycle lease; None when a cycle holds it (that cycle
    pushes a new head anyway)."""
    owner = f"refill-{uuid.uuid4().hex[:12]}"
    with store.session() as session:
        if not cycle_records.acquire_lease(session, project_id, owner, now=utcnow(), ttl_s=ttl_s):
            return None
    try:
        return work()
    finally:
        with store.session() as session:
            cycle_records.release_lease(session, project_id, owner)


def make_refill(settings: Settings, store: Store) -> Callable[[int], None]:
    """What the scheduler runs after a project's annotation changes: :func:`refill` with the
    project's settings, under its lease, with a Label Studio client of its own."""

    def run(project_id: int) -> None:
        effective = effective_settings(store, settings, project_id)
        top_k, state = effective.strategy.push_top_k, load_state(effective, project_id)
        if top_k is None or state is None:
            return
        if refill_count(state, labeled_tasks(store, project_id), top_k) == 0:
            return  # the usual case: decided without the lease, so cycles are never kept waiting
        with store.session() as session:
            project = session.get(Project, project_id)
            cfg = ingest.project_config(project) if project is not None else None
        if cfg is None:
            return

        def work() -> int:
            with LabelStudio(effective.label_studio) as ls:
                return refill(effective, store, ls, project_id, cfg)

        refill_under_lease(store, project_id, work)

    return run


def suggestions(
    trained: Trained | None, probs: NDArray[np.float64] | None, n: int
) -> NDArray[np.bool_]:
    """(n, C) bool pre-annotation of every pool row (``predict_annotation``, vectorized): the top
    class, or every label at or above its threshold; (n, 0) before a model exists."""
    if trained is None or probs is None:
        return np.zeros((n, 0), dtype=bool)
    model = trained.model
    if model.multilabel:
        cut = 0.5 if model.thresholds is None else np.asarray(model.thresholds, dtype=float)
        return np.asarray(probs >= cut, dtype=bool)
    chosen = np.zeros(probs.shape, dtype=bool)
    chosen[np.arange(probs.shape[0]), probs.argmax(axis=1)] = True
    return chosen


def queue_of(
    settings: Settings, scored: Scored, trained: Trained | None, version: str
) -> QueueState:
    """Every unlabeled task in the order the strategies chose, with its pre-annotation."""
    order = scored.priority.order
    clusters = scored.priority.clusters if settings.strategy.push_clusters else None
    classes = tuple(trained.model.classes) if trained is not None else ()
    return QueueState(
        version=version,
        task_ids=scored.task_ids[order].astype(np.int64),
        suggested=suggestions(trained, scored.probs, len(scored.task_ids))[order],
        classes=classes,
        clusters=clusters[order].astype(np.int64) if clusters is not None else None,
        pushed=0,
    )


def queue_items(settings: Settings, scored: Scored, trained: Trained | None) -> list[QueueItem]:
    """One queue entry per unlabeled task, in the order the strategies chose.

    Label Studio's prediction import drops scores outside [0, 1], so the queue position is
    scaled into [0, 1): lower still means label first.
    """
    queue = queue_of(settings, scored, trained, "")
    return queue.items(0, queue.n)


def push_head(
    settings: Settings, ls: LabelStudio, project_id: int, queue: QueueState, cfg: LabelConfig
) -> dict[str, int]:
    """Push the queue's first ``strategy.push_top_k`` tasks and switch Label Studio to them; the
    whole queue is stored for top-ups and ``/predict`` (:func:`save_state`)."""
    top_k = settings.strategy.push_top_k
    head = queue.n if top_k is None else min(top_k, queue.n)
    counts = push_queue(ls, project_id, queue.version, queue.items(0, head), cfg)
    save_state(settings, project_id, replace(queue, pushed=head))
    return {**counts, "queued": queue.n}
