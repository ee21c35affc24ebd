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


#: task id -> (image sha256, backbone, image reference) as stored.
Stored = dict[int, tuple[str, str, str | None]]


def _stored_where(session: Session, condition: Any) -> Stored:
    rows = session.execute(
        select(TaskImage.task_id, TaskImage.sha, TaskImage.backbone, TaskImage.image_ref).where(
            condition
        )
    )
    return {int(task_id): (sha, bb, ref) for task_id, sha, bb, ref in rows}


def _stored_by_task(session: Session, task_ids: Sequence[int]) -> Stored:
    """The stored rows of ``task_ids``, as plain columns (one query per :data:`CHUNK` ids)."""
    ids = list(task_ids)
    stored: Stored = {}
    for start in range(0, len(ids), CHUNK):
        stored.update(_stored_where(session, TaskImage.task_id.in_(ids[start : start + CHUNK])))
    return stored


def stored_rows(session: Session, project_ids: Iterable[int]) -> Stored:
    """Every stored row of the projects, as plain columns (one query per project)."""
    stored: Stored = {}
    for project_id in project_ids:
        stored.update(_stored_where(session, TaskImage.project_id == project_id))
    return stored


def record(
    session: Session,
    tasks: Sequence[Task],
    result: Embedded,
    backbone: str,
    stored: Stored | None = None,
) -> int:
    """Remember each embedded task's image reference, hash and backbone; returns the rows written.

    Rows that already say the same are left untouched, so a warm cycle writes nothing: the stored
    values are compared as plain columns (``stored``, when the caller read them already, else
    :func:`stored_rows`), and only rows that change are loaded (100,000 loaded rows cost 2.5 s).
    """
    hashes = result.hashes
    embedded_ids = set(result.embeddings)
    embedded = {t.id: t for t in tasks if t.id in embedded_ids and t.id in hashes}
    if not embedded:
        return 0
    if stored is None:
        stored = stored_rows(session, {t.project_id for t in embedded.values()})
    stored = dict(stored)
    # new tasks, or rows stored under another project
    stored.update(_stored_by_task(session, [t for t in embedded if t not in stored]))
    changed = [
        task_id
        for task_id, task in embedded.items()
        if stored.get(task_id) != (hashes[task_id], backbone, task.image_ref)
    ]
    for task_id in (t for t in changed if t not in stored):
        task = embedded[task_id]
        session.add(
            TaskImage(
                task_id=task_id,
                project_id=task.project_id,
                sha=hashes[task_id],
                backbone=backbone,
                image_ref=task.image_ref,
            )
        )
    outdated = [t for t in changed if t in stored]
    for start in range(0, len(outdated), CHUNK):
        chunk = outdated[start : start + CHUNK]
        for row in session.scalars(select(TaskImage).where(TaskImage.task_id.in_(chunk))):
            task = embedded[row.task_id]
            row.sha, row.backbone, row.image_ref = hashes[row.task_id], backbone, task.image_ref
            row.project_id = task.project_id
    return len(changed)


def lookup(session: Session, task_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """Task id -> (image sha256, backbone) for the tasks that were ever embedded."""
    stored = _stored_by_task(session, task_ids)
    return {task_id: (sha, backbone) for task_id, (sha, backbone, _) in stored.items()}


def known_hashes(stored: Stored, tasks: Sequence[Task]) -> dict[int, str]:
    """Task id -> the content hash of its image, for tasks whose image reference is still the one
    that was embedded (their image need not be fetched again to find its cached vector);
    ``stored``: :func:`stored_rows` of their projects."""
    return _same_ref(stored, {t.id: t.image_ref for t in tasks if t.image_ref})


def known_by_ref(session: Session, refs: Mapping[int, str]) -> dict[int, str]:
    """Like :func:`known_hashes` for a few tasks given as task id -> current image reference."""
    return _same_ref(_stored_by_task(session, list(refs)), refs)


def _same_ref(stored: Stored, refs: Mapping[int, str | None]) -> dict[int, str]:
    return {
        task_id: sha
        for task_id, (sha, _, ref) in stored.items()
        if ref is not None and refs.get(task_id) == ref
    }
