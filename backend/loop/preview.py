"""Preview: the queue that proposed settings would produce, next to today's, changing nothing.

The pool is built exactly as the cycle builds it (:func:`backend.loop.score.build_pool`) from what
the store and the disk already hold: the project's tasks and labels, the cached embeddings of the
images (found through ``task_images``) and the project's current model. Nothing is fetched,
embedded, trained, written to the database or sent to Label Studio. "Today's queue" is the same
computation with the project's current effective settings. The audit share and the adaptive
selection are planned as the cycle plans them, from the rewards already filed.

Changes to ``model`` fields other than ``seed`` need a retrained model and ``loop`` fields change
only when cycles run, so those are listed as ``not_previewed``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.loop.contract import Scored, ServedModel, Snapshot, Trained
from backend.loop.push import QueueItem
from backend.loop.queue import queue_items
from backend.loop.score import build_pool, score_stage
from backend.loop.selection import select_stage
from backend.loop.sync import load_snapshot
from backend.loop.targets import Targets
from backend.model.cache import EmbeddingCache
from backend.settings import Settings
from backend.store import task_images
from backend.store.db import Store
from backend.store.project_settings import diff, effective_settings, propose

#: Fields whose effect shows in the preview (all of ``strategy``, and the scoring seed).
PREVIEWED_MODEL_FIELDS = frozenset({"model.seed"})


def cached_embeddings(
    store: Store, settings: Settings, task_ids: list[int], backbone: str | None
) -> tuple[dict[int, NDArray[np.floating[Any]]], int]:
    """Cached vectors of ``task_ids`` and how many tasks have none.

    Args:
        backbone: the backbone the vectors must come from (the model's); None takes the one
            that embedded most of the tasks (no model yet).
    """
    with store.session() as session:
        keys = task_images.lookup(session, task_ids)
    if backbone is None and keys:
        backbone = Counter(name for _, name in keys.values()).most_common(1)[0][0]
    wanted = {task: sha for task, (sha, name) in keys.items() if name == backbone}
    cache = EmbeddingCache(settings.store.data_dir / "embeddings")
    vectors = cache.get_many(set(wanted.values()), backbone or "")
    embeddings = {task: vectors[sha] for task, sha in wanted.items() if sha in vectors}
    return embeddings, len(task_ids) - len(embeddings)


def _queue(
    settings: Settings,
    store: Store,
    project_id: int,
    snap: Snapshot,
    pool: tuple[NDArray[np.int64], Any, Any],
    trained: Trained | None,
) -> tuple[Scored, list[QueueItem], dict[str, object]]:
    """Scored and planned as the cycle does (audit share and adaptive selection included),
    filing nothing; the third value is the selection's report (mode, arm shares)."""
    scored = score_stage(settings, pool)
    chosen = select_stage(settings, store, project_id, snap, scored, write=False)
    scored = replace(scored, priority=chosen.priority)
    return scored, queue_items(settings, scored, trained), chosen.report()


def _pool(
    store: Store, settings: Settings, project_id: int, served: ServedModel | None
) -> tuple[Snapshot, tuple[NDArray[np.int64], Any, Any], Trained | None, int]:
    snap = load_snapshot(store, project_id)
    embeddings, missing = cached_embeddings(
        store, settings, [t.id for t in snap.tasks], served.model.backbone if served else None
    )
    empty = Targets(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    # The model's out-of-sample rows belong to the labels it was trained on, which the store no
    # longer lists; they only feed the review queue, which the preview does not show.
    trained = Trained(served.model, empty, served.version) if served else None
    return snap, build_pool(snap, embeddings, trained), trained, missing


def _item(
    rank: int, row: int, scored: Scored, item: QueueItem, today: dict[int, int]
) -> dict[str, Any]:
    priority = scored.priority
    return {
        "rank": rank,
        "task_id": item.task_id,
        "position": item.position,
        "breakdown": {name: float(values[row]) for name, values in priority.breakdown.items()},
        "suggested_labels": list(item.labels),
        "cluster": int(priority.clusters[row]),
        "today_rank": today.get(item.task_id),
    }


def preview(
    store: Store,
    settings: Settings,
    project_id: int,
    changes: Any,
    *,
    top: int,
    served: ServedModel | None,
) -> dict[str, Any]:
    """The top ``top`` items of the queue ``changes`` would produce, with today's for comparison.

    Args:
        settings: the config defaults (the project's overrides are applied here).
        changes: proposed ``{section: {field: value}}``, as for ``set_project_settings``.
        served: the project's current model (``ModelRegistry.get``), None before the first one.

    Raises:
        SettingsError: a proposed value is not allowed (the message names the setting).
        NotEnoughLabels: the project is unknown or has no supported label config.
    """
    current = effective_settings(store, settings, project_id)
    proposed = propose(store, settings, project_id, changes)
    snap, pool, trained, missing = _pool(store, settings, project_id, served)
    today_scored, today_items, today_selection = _queue(
        current, store, project_id, snap, pool, trained
    )
    scored, items, selection = _queue(proposed, store, project_id, snap, pool, trained)
    today = {item.task_id: rank for rank, item in enumerate(today_items, start=1)}
    shown = [
        _item(rank, int(row), scored, item, today)
        for rank, (row, item) in enumerate(zip(scored.priority.order, items, strict=True), start=1)
        if rank <= top
    ]
    overlap = {i["task_id"] for i in shown} & {i.task_id for i in today_items[:top]}
    changed = diff(current, proposed)
    return {
        "project": project_id,
        "model_version": served.version if served else None,
        "phase": {"today": today_scored.priority.phase, "proposed": scored.priority.phase},
        "weights": {
            "today": dict(today_scored.priority.weights),
            "proposed": dict(scored.priority.weights),
        },
        "selection": {
            "today": {k: today_selection[k] for k in ("mode", "shares", "audit_items")},
            "proposed": {k: selection[k] for k in ("mode", "shares", "audit_items")},
        },
        "changes": changed,
        "not_previewed": [
            c["field"]
            for c in changed
            if not c["field"].startswith("strategy.") and c["field"] not in PREVIEWED_MODEL_FIELDS
        ],
        "top": top,
        "items": shown,
        "overlap": {"count": len(overlap), "share": len(overlap) / max(1, len(shown))},
        "unlabeled": len(items),
        "left_out_without_embedding": missing,
        "skipped_signals": dict(scored.priority.skipped),
    }
