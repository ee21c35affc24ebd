"""Diagnosis findings as Label Studio Data Manager views, so annotators work through them where
they label: "labelloop: duplicates with conflicting labels" and "labelloop: image quality".

A view can only filter and order on task data, so each listed task gets ``labelloop_*`` keys in
its data (a rank to order by and a sentence shown as a column). Only tasks whose keys change are
written (one PATCH each, which replaces the whole data dict), at most ``max_tasks`` per view.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select

from backend.diagnosis.quality import ISSUES, REASON_SEP
from backend.diagnosis.schema import Diagnosis, Duplicates, ImageQuality
from backend.labelstudio.auth import LabelStudioError
from backend.loop.push import write_task_data
from backend.store.db import Store
from backend.store.models import Task

log = logging.getLogger(__name__)


class ViewTarget(Protocol):
    """The Label Studio calls the views need (``backend.labelstudio.client.LabelStudio``)."""

    def update_task_data(self, task: int, data: dict[str, Any]) -> None: ...
    def ensure_view(
        self, project: int, title: str, filters: dict[str, Any], ordering: Sequence[str]
    ) -> int: ...


@dataclass(frozen=True)
class TaskView:
    """A view over tasks marked by a rank key (ordered by it) and a reason key (a column)."""

    title: str
    rank_key: str
    reason_key: str

    @property
    def keys(self) -> tuple[str, str]:
        return self.rank_key, self.reason_key

    def filters(self) -> dict[str, Any]:
        item = {
            "filter": f"filter:tasks:data.{self.rank_key}",
            "operator": "greater",
            "type": "Number",
            "value": 0,
        }
        return {"conjunction": "and", "items": [item]}

    def ordering(self) -> list[str]:
        return [f"tasks:data.{self.rank_key}"]


DUPLICATES_VIEW = TaskView(
    "labelloop: duplicates with conflicting labels",
    "labelloop_duplicate_group",
    "labelloop_duplicate_reason",
)


QUALITY_VIEW = TaskView(
    "labelloop: image quality", "labelloop_quality_rank", "labelloop_quality_issue"
)


def quality_marks(quality: ImageQuality) -> dict[int, tuple[int, str]]:
    """Task id -> (rank, its issues in words) for every task with an image-quality issue.

    The rank is stable: 1 for a task with every issue, one more per issue fewer
    (``len(ISSUES) + 1 - issues``), ties ordered by task id in the view. A new flagged image
    then costs one write, not a rewrite of every task ranked below it (a position would shift)."""
    return {
        task: (len(ISSUES) + 1 - len(reason.split(REASON_SEP)), reason)
        for task, reason in zip(quality.flagged, quality.flagged_reasons, strict=True)
    }


def _label(value: str | None) -> str:
    return repr(value) if value is not None else "unlabeled"


def duplicate_marks(duplicates: Duplicates) -> dict[int, tuple[int, str]]:
    """Task id -> (group key, sentence) for every task of a group whose labels disagree.

    The group key, which the view orders by so a group's tasks stand together, is the group's
    lowest task id: a group found later does not renumber the others (their tasks are not
    written again)."""
    marks = {}
    for group in duplicates.conflicting:
        key = min(group.tasks)
        kind = "same image" if group.kind == "exact" else "near-duplicate"
        for task, label in zip(group.tasks, group.labels, strict=True):
            others = ", ".join(
                f"{t} ({_label(lab)})"
                for t, lab in zip(group.tasks, group.labels, strict=True)
                if t != task
            )
            marks[task] = (key, f"labeled {_label(label)}; {kind} as {others}")
    return marks


def push_view(
    ls: ViewTarget,
    store: Store,
    project_id: int,
    view: TaskView,
    marks: Mapping[int, tuple[int, str]],
    *,
    max_tasks: int,
) -> dict[str, int]:
    """Make ``view`` hold exactly the ``marks`` (lowest ranks first, at most ``max_tasks``)."""
    wanted = dict(sorted(marks.items(), key=lambda kv: (kv[1][0], kv[0]))[:max_tasks])
    with store.session() as session:
        tasks = list(
            session.scalars(
                select(Task).where(Task.project_id == project_id, Task.deleted.is_(False))
            )
        )
    writes: dict[int, dict[str, Any]] = {}
    for task in tasks:
        data = dict(task.data or {})
        if task.data is None or (task.id not in wanted and not any(k in data for k in view.keys)):
            continue
        new = {k: v for k, v in data.items() if k not in view.keys}
        if task.id in wanted:
            rank, reason = wanted[task.id]
            new[view.rank_key], new[view.reason_key] = rank, reason
        if new != data:
            writes[task.id] = new
    written, error = write_task_data(ls, store, writes)
    if error is not None:
        raise error
    ls.ensure_view(project_id, view.title, view.filters(), view.ordering())
    return {"tasks_marked": len(wanted), "tasks_written": len(written)}


def push_diagnosis_views(
    ls: ViewTarget, store: Store, project_id: int, diagnosis: Diagnosis, *, max_tasks: int
) -> dict[str, int]:
    """Every diagnosis view of the project brought up to date; counts for the cycle record.

    A Label Studio failure is logged and counted, never raised: the cycle's model and queue are
    already live, and the next cycle writes the views again.
    """
    counts: dict[str, int] = {}
    pending = []
    if diagnosis.duplicates is not None:
        pending.append(("duplicates", DUPLICATES_VIEW, duplicate_marks(diagnosis.duplicates)))
    if diagnosis.image_quality is not None:
        pending.append(("quality", QUALITY_VIEW, quality_marks(diagnosis.image_quality)))
    for name, view, marks in pending:
        try:
            done = push_view(ls, store, project_id, view, marks, max_tasks=max_tasks)
        except LabelStudioError as exc:
            log.warning("project %d: view %r not updated: %s", project_id, view.title, exc)
            counts[f"{name}_view_failed"] = 1
            continue
        counts.update({f"{name}_{k}": v for k, v in done.items()})
    return counts
