"""Repository functions of ``task_images``: which cached vector belongs to which task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.store.models import Task, TaskImage

CHUNK = 1000  # ids per IN (...) query, under every database's bound-parameter limit


class Embedded(Protocol):
    """What a featurize run tells the store (``backend.model.featurize.FeaturizeResult``)."""

    @property
    def embeddings(self) -> Mapping[int, Any]: ...

    @property
    def hashes(self) -> Mapping[int, str]: ...


def record(session: Session, tasks: Sequence[Task], result: Embedded, backbone: str) -> int:
    """Remember each embedded task's image reference, hash and backbone; returns the rows written.

    Rows that already say the same are left untouched, so a warm cycle writes nothing.
    """
    hashes = result.hashes
    embedded = {t.id: t for t in tasks if t.id in result.embeddings and t.id in hashes}
    if not embedded:
        return 0
    ids = list(embedded)
    known: dict[int, TaskImage] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        known.update(
            (row.task_id, row)
            for row in session.scalars(select(TaskImage).where(TaskImage.task_id.in_(chunk)))
        )
    written = 0
    for task_id, task in embedded.items():
        row, sha = known.get(task_id), hashes[task_id]
        if row is None:
            session.add(
                TaskImage(
                    task_id=task_id,
                    project_id=task.project_id,
                    sha=sha,
                    backbone=backbone,
                    image_ref=task.image_ref,
                )
            )
        elif (row.sha, row.backbone, row.image_ref) != (sha, backbone, task.image_ref):
            row.sha, row.backbone, row.image_ref = sha, backbone, task.image_ref
        else:
            continue
        written += 1
    return written


def lookup(session: Session, task_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """Task id -> (image sha256, backbone) for the tasks that were ever embedded."""
    out: dict[int, tuple[str, str]] = {}
    ids = list(task_ids)
    for start in range(0, len(ids), CHUNK):
        rows = session.execute(
            select(TaskImage.task_id, TaskImage.sha, TaskImage.backbone).where(
                TaskImage.task_id.in_(ids[start : start + CHUNK])
            )
        )
        out.update((int(task_id), (sha, backbone)) for task_id, sha, backbone in rows)
    return out


def known_hashes(session: Session, project_id: int, tasks: Sequence[Task]) -> dict[int, str]:
    """Task id -> the content hash of its image, for tasks whose image reference is still the one
    that was embedded (their image need not be fetched again to find its cached vector)."""
    refs = {t.id: t.image_ref for t in tasks if t.image_ref}
    rows = session.execute(
        select(TaskImage.task_id, TaskImage.sha, TaskImage.image_ref).where(
            TaskImage.project_id == project_id
        )
    )
    return _same_ref(rows, refs)


def known_by_ref(session: Session, refs: Mapping[int, str]) -> dict[int, str]:
    """Like :func:`known_hashes` for a few tasks given as task id -> current image reference."""
    ids = list(refs)
    out: dict[int, str] = {}
    for start in range(0, len(ids), CHUNK):
        rows = session.execute(
            select(TaskImage.task_id, TaskImage.sha, TaskImage.image_ref).where(
                TaskImage.task_id.in_(ids[start : start + CHUNK])
            )
        )
        out.update(_same_ref(rows, refs))
    return out


def _same_ref(rows: Iterable[Any], refs: Mapping[int, str | None]) -> dict[int, str]:
    return {
        int(task_id): sha
        for task_id, sha, ref in rows
        if ref is not None and refs.get(int(task_id)) == ref
    }
