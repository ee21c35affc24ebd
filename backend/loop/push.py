"""Push a cycle's decisions into Label Studio: the labeling queue and the review views.

What works and what it costs (measured on a real Label Studio 1.23.2):

- Labeling queue: bulk-import one prediction per unlabeled task under a fresh model version, with
  ``score`` = queue position scaled into [0, 1) (uncertainty sampling serves ascending scores; the
  import silently drops predictions whose score is outside [0, 1]) and
  ``result`` = the suggested label, then switch ``project.model_version`` to it. ~3 s per 5,000
  predictions; the project's ``model_version`` and ``sampling`` are set in one PATCH. Only the
  queue's head is pushed (see :mod:`backend.loop.queue`); older versions of ours are deleted
  after the cycle is recorded.
- Review queue: Data Manager views can only order on task data (ordering on ``meta`` gives 500),
  so a flagged task gets ``labelloop_*`` keys in its data (the stable suspicion value the view
  orders on, the given label, the model's label with its confidence and the reason) with one
  ``PATCH /api/tasks/{id}`` each (~0.15 s, and PATCH replaces the whole data dict; sent
  :data:`WRITE_WORKERS` at a time by :func:`write_task_data`). Only tasks
  entering or leaving a view, changing their labels or moving their suspicion by a step are
  written, and at most ``review_max_flags`` per view (what is over the limit is counted, never
  dropped silently). A
  view's ``hiddenColumns`` hide every other column, so the image, the given label, the model's
  label and the reason are the first columns a reviewer sees.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.labelstudio.config import LabelConfig
from backend.labelstudio.convert import choices_result
from backend.store.db import Store
from backend.store.models import Annotation, ReviewFlag, Task, utcnow

log = logging.getLogger(__name__)
ReviewKind = Literal["label_error", "disagreement"]
SAMPLING = "Uncertainty sampling"
VIEW_TITLES: Mapping[ReviewKind, str] = MappingProxyType(
    {
        "label_error": "labelloop: suspected label errors",
        "disagreement": "labelloop: annotator disagreements",
    }
)


class LabelStudioPush(Protocol):
    """The calls a push makes (``backend.labelstudio.client.LabelStudio``)."""

    def import_predictions(self, project: int, predictions: Sequence[dict[str, Any]]) -> int: ...
    def create_prediction(self, prediction: dict[str, Any]) -> dict[str, Any]: ...
    def get_project(self, project: int) -> dict[str, Any]: ...
    def update_project(self, project: int, **fields: Any) -> dict[str, Any]: ...
    def model_versions(self, project: int) -> dict[str, int]: ...
    def delete_model_version(self, project: int, version: str) -> int: ...
    def update_task_data(self, task: int, data: dict[str, Any]) -> None: ...
    def ensure_view(
        self,
        project: int,
        title: str,
        filters: dict[str, Any],
        ordering: Sequence[str],
        *,
        shown: Sequence[str] | None = None,
    ) -> int: ...


#: Task PATCHes in flight at once: Label Studio 1.23.2 answered 40 of them ~30 % sooner four at a
#: time than one by one (2 cores); more only wait on its workers.
WRITE_WORKERS = 4


class TaskDataTarget(Protocol):
    """The one call :func:`write_task_data` makes (``backend.labelstudio.client.LabelStudio``)."""

    def update_task_data(self, task: int, data: dict[str, Any]) -> None: ...


def write_task_data(
    ls: TaskDataTarget, store: Store, writes: Mapping[int, dict[str, Any]]
) -> tuple[set[int], Exception | None]:
    """Replace each task's ``data`` in Label Studio (``WRITE_WORKERS`` PATCHes at a time) and in
    the store, for the writes Label Studio took.

    Returns:
        the task ids written, and the first failure (None when every write went through). The
        caller records what was written before it raises the failure, so the store never
        disagrees with Label Studio about a task it wrote.
    """

    def send(item: tuple[int, dict[str, Any]]) -> Exception | None:
        try:
            ls.update_task_data(*item)
        except Exception as exc:  # returned to the caller, which raises it after its bookkeeping
            return exc
        return None

    items = list(writes.items())
    if len(items) > 1:
        with ThreadPoolExecutor(min(WRITE_WORKERS, len(items))) as pool:
            errors = list(pool.map(send, items))
    else:
        errors = [send(item) for item in items]
    written = {task_id for (task_id, _), error in zip(items, errors, strict=True) if error is None}
    with store.session() as session:
        for row in session.scalars(select(Task).where(Task.id.in_(written))):
            row.data = writes[row.id]
    failed = [(task_id, e) for (task_id, _), e in zip(items, errors, strict=True) if e is not None]
    for task_id, error in failed[1:]:  # the caller raises the first
        log.warning("task %s: its data was not written: %s", task_id, error)
    return written, failed[0][1] if failed else None


class PushError(RuntimeError):
    """Label Studio did not take what we pushed; the previous queue stays live."""


@dataclass(frozen=True)
class QueueItem:
    task_id: int
    position: float  # in [0, 1); 0 = label first
    labels: tuple[str, ...]  # suggested pre-annotation; empty before a model exists
    cluster: int | None = None


def queue_predictions(
    items: Sequence[QueueItem], version: str, cfg: LabelConfig
) -> list[dict[str, Any]]:
    """The predictions that put ``items`` into Label Studio's queue under ``version``."""
    predictions = []
    for item in items:
        prediction: dict[str, Any] = {
            "task": item.task_id,
            "model_version": version,
            "score": float(item.position),
            "result": choices_result(list(item.labels), cfg) if item.labels else [],
        }
        if item.cluster is not None:
            prediction["cluster"] = int(item.cluster)
        predictions.append(prediction)
    return predictions


def add_to_queue(
    ls: LabelStudioPush,
    project_id: int,
    version: str,
    items: Sequence[QueueItem],
    cfg: LabelConfig,
) -> int:
    """Create the predictions of ``items`` under ``version``; raises unless all were stored."""
    predictions = queue_predictions(items, version, cfg)
    if any("cluster" in p for p in predictions):
        # The bulk import drops ``cluster`` (Label Studio 1.23.2), so clustered predictions are
        # created one by one: ~0.2 s each, only sensible for a few thousand tasks.
        created = sum(1 for p in predictions if ls.create_prediction(p).get("id") is not None)
    else:
        created = ls.import_predictions(project_id, predictions) if predictions else 0
    if created != len(predictions):
        # Label Studio drops predictions it finds invalid and only logs it: never switch the
        # annotators' queue to a version that lacks part of it.
        raise PushError(
            f"Label Studio stored {created} of {len(predictions)} predictions of {version}"
        )
    return created


def push_queue(
    ls: LabelStudioPush,
    project_id: int,
    version: str,
    items: Sequence[QueueItem],
    cfg: LabelConfig,
) -> dict[str, int]:
    """Import ``items`` (the queue's head) under ``version``, then make Label Studio serve it.

    One project PATCH switches the model version and the sampling together. Older versions stay
    until :func:`prune_predictions` runs, after the cycle is recorded.
    """
    created = add_to_queue(ls, project_id, version, items, cfg)
    if created:  # nothing left to label: the version would not exist (400), keep the old one
        ls.update_project(project_id, model_version=version, sampling=SAMPLING)
    return {"predictions": created}


def prune_predictions(ls: LabelStudioPush, project_id: int, prefix: str, current: str) -> int:
    """Delete every prediction version named ``prefix...`` but ``current``: one request each.

    Runs off the annotators' critical path (after ``current`` serves the queue and the cycle is
    recorded): Label Studio deletes predictions row by row, seconds per thousand.
    """
    stale = [v for v in ls.model_versions(project_id) if v.startswith(prefix) and v != current]
    deleted = 0
    for version in stale:
        deleted += ls.delete_model_version(project_id, version)
    log.info("project %d: pruned %d old versions (%d predictions)", project_id, len(stale), deleted)
    return deleted


@dataclass(frozen=True)
class Suspect:
    """A labeled task that looks wrong, with what a reviewer needs to see why.

    ``score`` is the stable suspicion value the view orders by (for label errors the calibrated
    probability that the given label is wrong); the task carries it as :func:`suspicion_value`.
    """

    task_id: int
    score: float
    reason: str
    annotated_label: str | None
    model_label: str | None
    model_confidence: float | None
    #: The task's explanation page (the model's maps and similar labeled items), a view column.
    explain_url: str | None = None


#: Decimals of the suspicion value written into a task: a change below that is not worth a PATCH.
SUSPICION_DECIMALS = 2
#: How far the suspicion value must move from the value written before the flag is written
#: again (0.1 = the odds that the label is wrong changed by a quarter).
SUSPICION_STEP = 0.1
#: The smallest chance that a label is right the value tells apart (its ceiling is 9).
_RIGHT_FLOOR = 1e-9
GIVEN_KEY, MODEL_KEY = "labelloop_given", "labelloop_model"
EXPLAIN_KEY = "labelloop_explain"


def _keys(kind: ReviewKind) -> tuple[str, str]:
    return f"labelloop_{kind}_suspicion", f"labelloop_{kind}_reason"


def suspicion_value(score: float) -> float:
    """The value written into the task and ordered on: ``-log10`` of the chance that the label
    is right (``1 - score``; 1 = 90 % wrong, 2 = 99 %, 3 = 99.9 %), rounded, never 0 (0 = not
    flagged).

    On this scale the most suspicious items stay apart (on the probability itself, rounded,
    every item above 99.5 % ties at 1.00 and Label Studio orders the ties by task id), and a
    value changes only when the evidence changes by a few per cent of its odds, so pushes stay
    few.
    """
    right = max(1.0 - float(score), _RIGHT_FLOOR)
    return max(round(-math.log10(right), SUSPICION_DECIMALS), 10.0**-SUSPICION_DECIMALS)


def review_view_filters(kind: ReviewKind) -> tuple[dict[str, Any], list[str]]:
    value_key, _ = _keys(kind)
    item = {
        "filter": f"filter:tasks:data.{value_key}",
        "operator": "greater",
        "type": "Number",
        "value": 0,
    }
    return {"conjunction": "and", "items": [item]}, [f"-tasks:data.{value_key}"]


def review_view_columns(image_key: str, kind: ReviewKind, *, explain: bool = False) -> list[str]:
    """What a review view shows, in this order: the image, the given label(s), the model's label
    with its confidence, the reason sentence, and (``explain``) the explanation link."""
    keys = (image_key, GIVEN_KEY, MODEL_KEY, _keys(kind)[1], *([EXPLAIN_KEY] if explain else []))
    return [f"tasks:data.{k}" for k in keys]


def _flag_data(data: dict[str, Any], kind: ReviewKind, s: Suspect) -> dict[str, Any]:
    value_key, reason_key = _keys(kind)
    out = _unflag_data(data, kind)
    out[GIVEN_KEY] = s.annotated_label or ""
    confidence = f" ({s.model_confidence:.0%})" if s.model_confidence is not None else ""
    out[MODEL_KEY] = f"{s.model_label}{confidence}" if s.model_label else ""
    out[reason_key], out[value_key] = s.reason, suspicion_value(s.score)
    if s.explain_url:
        out[EXPLAIN_KEY] = s.explain_url
    return out


def _unflag_data(data: dict[str, Any], kind: ReviewKind) -> dict[str, Any]:
    drop = set(_keys(kind)) | {f"labelloop_{kind}_rank"}  # the rank of earlier versions
    out = {k: v for k, v in (data or {}).items() if k not in drop}
    if not any(k.endswith("_suspicion") and k.startswith("labelloop_") for k in out):
        out = {k: v for k, v in out.items() if k not in (GIVEN_KEY, MODEL_KEY, EXPLAIN_KEY)}
        out.pop("labelloop_model_label", None)
        out.pop("labelloop_model_confidence", None)
    return out


CONFIRMED, REJECTED = "confirmed", "rejected"


def mark_reviewed(store: Store, project_id: int, current: Mapping[int, str]) -> dict[str, int]:
    """Record what reviewers did with the active flags: a flag whose task got an annotation saved
    after it was flagged is reviewed, "confirmed" when the task's label (``current``: task id ->
    its given label(s) now, as flags write them) differs from the one flagged, else "rejected".

    Returns:
        how many flags were confirmed and rejected now.
    """
    counts = {CONFIRMED: 0, REJECTED: 0}
    with store.session() as session:
        flags = session.scalars(
            select(ReviewFlag).where(
                ReviewFlag.project_id == project_id,
                ReviewFlag.reviewed_at.is_(None),
                ReviewFlag.active.is_(True),
            )
        ).all()
        latest: dict[int, Any] = {}
        for ann in session.scalars(
            select(Annotation).where(
                Annotation.task_id.in_([f.task_id for f in flags]), Annotation.deleted.is_(False)
            )
        ):
            if ann.ls_updated_at and (
                ann.task_id not in latest or ann.ls_updated_at > latest[ann.task_id]
            ):
                latest[ann.task_id] = ann.ls_updated_at
        for flag in flags:
            seen = latest.get(flag.task_id)
            if seen is None or seen <= flag.flagged_at:
                continue
            now = current.get(flag.task_id)
            flag.reviewed_at, flag.resolved_label = utcnow(), now
            flag.outcome = REJECTED if now == flag.annotated_label else CONFIRMED
            counts[flag.outcome] += 1
    return counts


def settled_tasks(
    store: Store, project_id: int, kind: ReviewKind, current: Mapping[int, str]
) -> set[int]:
    """Tasks a reviewer already settled whose label has not changed since: not flagged again."""
    with store.session() as session:
        rows = session.execute(
            select(ReviewFlag.task_id, ReviewFlag.resolved_label)
            .where(
                ReviewFlag.project_id == project_id,
                ReviewFlag.kind == kind,
                ReviewFlag.reviewed_at.is_not(None),
            )
            .order_by(ReviewFlag.reviewed_at)
        ).all()
    resolved = {int(task): label for task, label in rows}  # the latest review per task wins
    return {task for task, label in resolved.items() if current.get(task) == label}


def review_outcomes(store: Store, project_id: int) -> dict[str, Any]:
    """Measured precision of the review flags, per kind: confirmed, rejected, pending (in a view,
    not reviewed yet) and withdrawn (left the view unreviewed), per cycle that raised them and in
    total, with ``precision`` = confirmed / (confirmed + rejected) (None before any review)."""
    with store.session() as session:
        rows = session.execute(
            select(
                ReviewFlag.kind, ReviewFlag.cycle_id, ReviewFlag.outcome, ReviewFlag.active
            ).where(ReviewFlag.project_id == project_id)
        ).all()
    out: dict[str, Any] = {}
    for kind, cycle_id, outcome, active in rows:
        state = outcome or ("pending" if active else "withdrawn")
        entry = out.setdefault(kind, {"total": _tally(), "cycles": {}})
        for tally in (entry["total"], entry["cycles"].setdefault(str(cycle_id), _tally())):
            tally[state] += 1
    for entry in out.values():
        for tally in (entry["total"], *entry["cycles"].values()):
            judged = tally[CONFIRMED] + tally[REJECTED]
            tally["precision"] = round(tally[CONFIRMED] / judged, 4) if judged else None
    return out


def _tally() -> dict[str, Any]:
    return {CONFIRMED: 0, REJECTED: 0, "pending": 0, "withdrawn": 0}


def push_review(
    ls: LabelStudioPush,
    store: Store,
    project_id: int,
    kind: ReviewKind,
    suspects: Sequence[Suspect],
    *,
    max_flags: int,
    image_key: str | None = None,
    cycle_id: int | None = None,
) -> dict[str, int]:
    """Make the review view hold ``suspects`` (best first), writing only what changed: a task is
    PATCHed when it enters or leaves the view, its labels change or its suspicion value moves by
    :data:`SUSPICION_STEP`, so one new suspect costs one request, not a rewrite of every flag
    ranked below it, and retraining's small moves cost none."""
    wanted = {s.task_id: s for s in suspects[:max_flags]}
    with store.session() as session:
        active = {
            f.task_id: f
            for f in session.scalars(
                select(ReviewFlag).where(
                    ReviewFlag.project_id == project_id,
                    ReviewFlag.kind == kind,
                    ReviewFlag.active.is_(True),
                )
            )
        }
        tasks = {
            t.id: t
            for t in session.scalars(select(Task).where(Task.id.in_(set(wanted) | set(active))))
        }
    counts = {
        "flagged": 0,
        "unflagged": 0,
        "unchanged": 0,
        "over_limit": len(suspects) - len(wanted),
    }
    leaving = [f for i, f in active.items() if i not in wanted or f.reviewed_at is not None]
    entering: list[tuple[int, Suspect]] = []
    for rank, (task_id, suspect) in enumerate(wanted.items(), start=1):
        current = active.get(task_id)
        if current is not None and current.pushed and not _moved(current, suspect):
            counts["unchanged"] += 1
        else:
            entering.append((rank, suspect))
    writes = _flag_writes(tasks, kind, leaving, [s for _, s in entering])
    written, error = write_task_data(ls, store, writes)
    with store.session() as session:
        for flag in leaving:  # a flag whose task has no data in the store has nothing to undo
            if flag.task_id in written or flag.task_id not in writes:
                _unflag(session, flag)
                counts["unflagged"] += 1
        for rank, suspect in entering:
            if suspect.task_id in written:
                _flag(session, project_id, kind, rank, suspect, cycle_id)
                counts["flagged"] += 1
    if error is not None:
        raise error
    filters, ordering = review_view_filters(kind)
    explain = any(s.explain_url for s in wanted.values())
    shown = review_view_columns(image_key, kind, explain=explain) if image_key else None
    ls.ensure_view(project_id, VIEW_TITLES[kind], filters, ordering, shown=shown)
    return counts


def _flag_writes(
    tasks: Mapping[int, Task],
    kind: ReviewKind,
    leaving: Sequence[ReviewFlag],
    entering: Sequence[Suspect],
) -> dict[int, dict[str, Any]]:
    """Each task's new data: flags taken off, then flags written (a task absent from the store,
    or without data, gets no write)."""
    writes: dict[int, dict[str, Any]] = {}
    for flag in leaving:
        task = tasks.get(flag.task_id)
        if task is not None and task.data is not None:
            writes[task.id] = _unflag_data(task.data, kind)
    for suspect in entering:
        task = tasks.get(suspect.task_id)
        if task is not None and task.data is not None:
            writes[task.id] = _flag_data(task.data, kind, suspect)
    return writes


def _moved(written: ReviewFlag, suspect: Suspect) -> bool:
    """Whether a flag in Label Studio must be written again: its given or suggested label
    changed, or its suspicion value moved by :data:`SUSPICION_STEP` or more from the value
    written. Smaller moves keep the written value (the view's order among near-equal flags may
    lag by less than a step), so retraining does not rewrite every flag each cycle."""
    if (written.annotated_label, written.model_label) != (
        suspect.annotated_label,
        suspect.model_label,
    ):
        return True
    change = abs(suspicion_value(written.score) - suspicion_value(suspect.score))
    return change >= SUSPICION_STEP - 1e-9


def _unflag(session: Session, flag: ReviewFlag) -> None:
    row = session.get(ReviewFlag, flag.id)
    if row is not None:
        row.active = False


def _flag(
    session: Session,
    project_id: int,
    kind: ReviewKind,
    rank: int,
    suspect: Suspect,
    cycle_id: int | None,
) -> None:
    values = {
        "rank": rank,
        "score": suspect.score,
        "reason": suspect.reason,
        "annotated_label": suspect.annotated_label,
        "model_label": suspect.model_label,
        "model_confidence": suspect.model_confidence,
        "pushed": True,
    }
    current = session.scalars(
        select(ReviewFlag).where(
            ReviewFlag.task_id == suspect.task_id,
            ReviewFlag.kind == kind,
            ReviewFlag.active.is_(True),
        )
    ).all()
    if current:  # the same flag with a new value: one row per flag, for its outcome
        for name, value in values.items():
            setattr(current[0], name, value)
        for extra in current[1:]:
            extra.active = False
        return
    session.add(
        ReviewFlag(
            project_id=project_id, task_id=suspect.task_id, kind=kind, cycle_id=cycle_id, **values
        )
    )
