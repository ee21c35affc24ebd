"""The cycle's side of the diagnosis: build it from a cycle's arrays and save it atomically to
``<data_dir>/diagnosis/p<project>.json``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.exc import SQLAlchemyError

from backend.diagnosis.compute import DiagnosisInputs, IntArray, compute_diagnosis
from backend.diagnosis.projection import KeptMap
from backend.diagnosis.quality import stats_matrix
from backend.diagnosis.schema import Diagnosis, Review, ReviewAnnotator, ReviewTally
from backend.diagnosis.views import push_diagnosis_views
from backend.files import atomic_write
from backend.labelstudio.client import LabelStudio
from backend.loop.contract import Scored, Snapshot, Trained
from backend.loop.doubt import given_labels
from backend.loop.image_stats import load_stats, stats_path
from backend.loop.push import review_outcomes, settled_tasks
from backend.loop.review import (
    SUSPICION,
    crowd_of,
    decide,
    flag_scores,
    gate_reasons,
    review_signal,
)
from backend.loop.targets import annotator_matrix
from backend.loop.task_fields import slice_columns
from backend.settings import Settings
from backend.store import task_images
from backend.store.db import Store
from strategies import REGISTRY, Pool

log = logging.getLogger(__name__)


def diagnosis_path(settings: Settings, project_id: int) -> Path:
    return settings.store.data_dir / "diagnosis" / f"p{project_id}.json"


def kept_map(settings: Settings, project_id: int) -> KeptMap:
    """Where the project's embedding-map fit is kept between cycles."""
    return KeptMap(settings.store.data_dir / "diagnosis" / f"p{project_id}.map.npz")


def task_splits(
    snap: Snapshot, task_ids: Sequence[int] | NDArray[np.int64], field: str | None
) -> tuple[str | None, ...] | None:
    """Each task's split (the string in its data ``field``), None when no task has one."""
    if field is None:
        return None
    data = {t.id: t.data or {} for t in snap.tasks}
    values = [data.get(int(t), {}).get(field) for t in task_ids]
    splits = tuple(str(v) if isinstance(v, str | int) and v != "" else None for v in values)
    return splits if any(v is not None for v in splits) else None


def task_hashes(
    store: Store, task_ids: Sequence[int] | NDArray[np.int64]
) -> tuple[str | None, ...]:
    """Each task's image sha256 as last featurized, None where never."""
    with store.session() as session:
        known = task_images.lookup(session, [int(t) for t in task_ids])
    return tuple(known[int(t)][0] if int(t) in known else None for t in task_ids)


def inputs_from_cycle(
    settings: Settings,
    snap: Snapshot,
    scored: Scored,
    trained: Trained | None,
    reviewed: frozenset[int] = frozenset(),
    hashes: tuple[str | None, ...] | None = None,
) -> DiagnosisInputs:
    """The diagnosis inputs of one cycle: the scored pool plus the snapshot's targets.

    ``reviewed``: task ids whose label-error flag an annotator already answered; ``hashes``:
    each task's image sha256 (exact duplicates).
    """
    pool, classes = scored.pool, tuple(snap.cfg.labels)
    labels = np.array(pool.labels, dtype=np.int64)
    if snap.cfg.multiple:
        labels, counts = _multilabel_marks(snap, scored.task_ids, labels >= 0)
    else:
        counts = np.bincount(labels[labels >= 0], minlength=len(classes)).astype(np.int64)
    name = review_signal(settings, pool)
    info = REGISTRY[name]
    errors = None
    quality = decide(settings, pool) if name == SUSPICION else None
    if quality is not None:  # the same decision as the review view's, with the project's gate
        errors = flag_scores(quality)
    elif pool.oos_probs is not None and info.unavailable(pool) is None:
        errors = info.score(pool, rng=np.random.default_rng(settings.model.seed))
    return DiagnosisInputs(
        task_ids=np.asarray(scored.task_ids, dtype=np.int64),
        embeddings=np.asarray(pool.embeddings, dtype=np.float64),
        labels=labels,
        classes=classes,
        class_counts=counts,
        clusters=np.asarray(scored.priority.clusters, dtype=np.int64),
        oos_probs=None if pool.oos_probs is None else np.asarray(pool.oos_probs),
        targets=None if pool.targets is None else np.asarray(pool.targets),
        error_scores=errors,
        error_alarm=info.alarm if info.alarm is not None else 0.0,
        metrics=dict(trained.model.metrics) if trained is not None else None,
        reviewed=reviewed,
        hashes=hashes,
        splits=task_splits(snap, scored.task_ids, settings.diagnosis.split_field),
        slice_values=task_slice_values(settings, snap, scored.task_ids),
        slices_configured=settings.diagnosis.slice_fields is not None,
    )


def task_slice_values(
    settings: Settings, snap: Snapshot, task_ids: Sequence[int] | NDArray[np.int64]
) -> dict[str, tuple[str | None, ...]]:
    """Slice field -> each task's value (the admin's fields, else the offered ones)."""
    configured = settings.diagnosis.slice_fields
    return slice_columns(snap.tasks, task_ids, configured, image_key=snap.cfg.value_key)


def _multilabel_marks(
    snap: Snapshot, task_ids: NDArray[np.int64], labeled: NDArray[np.bool_]
) -> tuple[IntArray, IntArray]:
    """(n,) first positive label of each labeled item (-1 elsewhere) and (C,) labels per class."""
    targets = snap.targets
    y = np.asarray(targets.y, dtype=np.int64).reshape(len(targets.task_ids), len(snap.cfg.labels))
    first = dict(zip(targets.task_ids.tolist(), y.argmax(axis=1).tolist(), strict=True))
    labels = np.array([first.get(int(t), -1) for t in task_ids], dtype=np.int64)
    return np.where(labeled, labels, -1).astype(np.int64), y.sum(axis=0).astype(np.int64)


def save_diagnosis(path: Path, diagnosis: Diagnosis) -> None:
    """Write the diagnosis atomically (a reader sees the old file or the new, never half)."""
    with atomic_write(path) as handle:
        handle.write(diagnosis.model_dump_json().encode("utf-8"))


def _review(
    settings: Settings, snap: Snapshot, scored: Scored, store: Store | None, project_id: int
) -> Review | None:
    if snap.cfg.multiple and scored.pool.oos_probs is None:
        return None
    outcomes = review_outcomes(store, project_id) if store is not None else {}
    classes = {label: i for i, label in enumerate(snap.cfg.labels)}
    _, annotators = annotator_matrix(snap.annotations, scored.task_ids, classes)
    return review_section(settings, scored.pool, snap.cfg.labels, outcomes, annotators)


def review_section(
    settings: Settings,
    pool: Pool,
    names: Sequence[str],
    outcomes: Mapping[str, Any],
    annotator_ids: Sequence[int],
) -> Review:
    """The dashboard's account of the review queue: the decision, why some classes wait, what
    reviewers did with the flags, and each annotator's reliability."""
    signal = review_signal(settings, pool)
    quality = decide(settings, pool) if signal == SUSPICION else None
    tallies = {kind: ReviewTally(**entry["total"]) for kind, entry in outcomes.items()}
    crowd = crowd_of(pool)
    annotators = []
    if crowd is not None:
        for j, annotator in enumerate(annotator_ids):
            agreement = float(crowd.agreement[j])
            annotators.append(
                ReviewAnnotator(
                    annotator=int(annotator),
                    annotations=int(crowd.annotations[j]),
                    agreement=None if np.isnan(agreement) else round(agreement, 4),
                    reliability=round(float(crowd.reliability[j]), 4),
                )
            )
        annotators.sort(key=lambda a: a.reliability)
    return Review(
        signal=signal,
        flagged=int(quality.flagged.sum()) if quality is not None else 0,
        expected_false_share=(
            round(quality.expected_false_share, 4) if quality is not None else None
        ),
        max_false_share=settings.strategy.review_max_false_share,
        gate=gate_reasons(quality, names) if quality is not None else [],
        outcomes=tallies,
        annotators=annotators,
    )


def write_diagnosis(
    settings: Settings,
    project_id: int,
    snap: Snapshot,
    embeddings: Mapping[int, NDArray[np.floating[Any]]],
    scored: Scored,
    trained: Trained | None,
    reviewed: Callable[[], frozenset[int]] = frozenset,
    store: Store | None = None,
) -> tuple[dict[str, int], Diagnosis | None]:
    """Compute and save the project's diagnosis; returns counts for the cycle record and it.

    ``reviewed``: reads the task ids already reviewed as label errors (left out of the
    candidates); called inside the guard, so a failing read only costs the diagnosis.
    ``store``: where the tasks' image hashes are read from (exact duplicates).

    A failure is logged and counted, never raised: the diagnosis must not fail a cycle whose model
    and queue are already live.
    """
    if not embeddings or scored.pool.embeddings is None:
        return {"diagnosis": 0}, None
    try:
        hashes = task_hashes(store, scored.task_ids) if store is not None else None
        inputs = inputs_from_cycle(settings, snap, scored, trained, reviewed(), hashes)
        if hashes is not None:
            known = load_stats(stats_path(settings, project_id))
            if known:
                inputs = replace(inputs, image_stats=stats_matrix(hashes, known))
        diagnosis = compute_diagnosis(
            inputs,
            limits=settings.diagnosis,
            rng=np.random.default_rng(settings.model.seed),
            kept_map=kept_map(settings, project_id),
        ).model_copy(
            update={
                "project": project_id,
                "model_version": trained.version if trained else None,
                "review": _review(settings, snap, scored, store, project_id),
            }
        )
        save_diagnosis(diagnosis_path(settings, project_id), diagnosis)
    except (ValueError, OSError, np.linalg.LinAlgError, SQLAlchemyError) as exc:
        log.warning("project %d: diagnosis not written: %s", project_id, type(exc).__name__)
        return {"diagnosis": 0, "diagnosis_failed": 1}, None
    return {"diagnosis": 1, "diagnosis_errors": len(diagnosis.label_errors)}, diagnosis


def record_diagnosis(
    settings: Settings,
    store: Store,
    ls: LabelStudio,
    project_id: int,
    snap: Snapshot,
    embeddings: Mapping[int, NDArray[np.floating[Any]]],
    scored: Scored,
    trained: Trained | None,
) -> dict[str, int]:
    """The diagnosis of a recorded cycle (part of its "after" work): compute and save it, then
    bring its Label Studio views up to date; counts for the cycle record (Label Studio failures
    counted, not raised)."""
    counts, diagnosis = write_diagnosis(
        settings,
        project_id,
        snap,
        embeddings,
        scored,
        trained,
        lambda: frozenset(settled_tasks(store, project_id, "label_error", given_labels(snap))),
        store=store,
    )
    if diagnosis is not None:
        views = push_diagnosis_views(
            ls, store, project_id, diagnosis, max_tasks=settings.strategy.review_max_flags
        )
        counts = {**counts, **views}
    return counts
