"""Repository functions of ``task_images``: which cached vector belongs to which task."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.model.featurize import FeaturizeResult
from backend.store.models import Task, TaskImage


def record(session: Session, tasks: Sequence[Task], result: FeaturizeResult, backbone: str) -> int:
    """Remember each embedded task's image hash and backbone; returns the rows written."""
    hashes = result.hashes
    project_of = {t.id: t.project_id for t in tasks if t.id in result.embeddings and t.id in hashes}
    if not project_of:
        return 0
    known = {
        row.task_id: row
        for row in session.scalars(select(TaskImage).where(TaskImage.task_id.in_(list(project_of))))
    }
    for task_id, project_id in project_of.items():
        row = known.get(task_id)
        if row is None:
            session.add(
                TaskImage(
                    task_id=task_id, project_id=project_id, sha=hashes[task_id], backbone=backbone
                )
            )
        else:
            row.sha, row.backbone = hashes[task_id], backbone
    return len(project_of)


def lookup(session: Session, task_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """Task id -> (image sha256, backbone) for the tasks that were ever embedded."""
    rows = session.execute(
        select(TaskImage.task_id, TaskImage.sha, TaskImage.backbone).where(
            TaskImage.task_id.in_(list(task_ids))
        )
    )
    return {int(task_id): (sha, backbone) for task_id, sha, backbone in rows}
