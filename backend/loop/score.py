"""Score: the pool the strategies read, built from what the cycle produced, and its priority.

The pool holds every embedded task in ascending task id order: labels (or tags), the model's
probabilities, the committee's, out-of-sample probabilities of the labeled items, annotations by
annotator, clusters and slices. :func:`score_stage` runs the strategies over it
(:func:`strategies.combine.prioritize`) into the combined priority.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.loop.contract import Scored, Snapshot, Trained
from backend.loop.targets import annotator_matrix
from backend.loop.task_fields import slice_columns, slice_ids
from backend.model.featurize import Embeddings
from backend.settings import Settings
from strategies import Pool
from strategies.base import Basis, threads
from strategies.combine import Priority, prioritize
from strategies.duplicates import demote_copies

#: The near-copy search covers this many times ``strategy.push_top_k`` of the queue's head.
COPY_HEAD_FACTOR = 2


def _annotator_matrix(snap: Snapshot, task_ids: NDArray[np.int64]) -> NDArray[np.int64] | None:
    if snap.cfg.multiple:
        return None
    classes = {label: i for i, label in enumerate(snap.cfg.labels)}
    return annotator_matrix(snap.annotations, task_ids, classes)[0]


#: ``clusters_for(task_ids, embeddings)``: each task's cluster and the pool's principal directions.
ClustersFor = Callable[
    [NDArray[np.int64], NDArray[np.floating[Any]]], tuple[NDArray[np.int64], Basis | None]
]


def build_pool(
    snap: Snapshot,
    embeddings: Mapping[int, NDArray[np.floating[Any]]],
    trained: Trained | None,
    slice_fields: Sequence[str] | None = None,
    clusters_for: ClustersFor | None = None,
) -> tuple[NDArray[np.int64], Pool, NDArray[np.float64] | None]:
    """Arrays for the strategies, in ascending task id order (tasks without embeddings left out).

    ``slice_fields``: task data fields whose values are the pool's slices (None: the offered
    low-cardinality fields, see :mod:`backend.loop.task_fields`).
    ``clusters_for(task_ids, embeddings)``: the pool's clusters and principal directions once a
    model exists (the cycle reuses stored ones, :mod:`backend.loop.clusters`); None lets the
    strategies run k-means and fit their own directions.
    """
    table = Embeddings.of(embeddings)  # a cycle's featurize result already is one
    task_ids = table.ids
    index = table.rows
    x = table.matrix if len(task_ids) else np.zeros((0, 1), dtype=np.float32)
    labels = np.full(len(task_ids), -1, dtype=np.int64)
    targets = snap.targets
    tags = np.zeros((len(task_ids), len(snap.cfg.labels)), dtype=np.int64)  # multi-label only
    for row, task in enumerate(targets.task_ids):
        if int(task) in index:
            labels[index[int(task)]] = 0 if snap.cfg.multiple else int(targets.y[row])
            if snap.cfg.multiple:
                tags[index[int(task)]] = targets.y[row]
    probs = committee = oos = None
    if trained is not None and len(task_ids):
        probs, committee = trained.model.pool_proba(x)
        oos = probs.copy()
        for row, task in enumerate(trained.used.task_ids):
            oos[index[int(task)]] = trained.model.oos_probs[row]
    clusters, basis = (
        clusters_for(task_ids, x) if clusters_for and probs is not None else (None, None)
    )
    pool = Pool(
        labels=labels,
        probs=probs,
        committee=committee,
        embeddings=x,
        oos_probs=oos,
        annotations=_annotator_matrix(snap, task_ids),
        clusters=clusters,
        targets=tags if snap.cfg.multiple and oos is not None else None,
        slices=_slices(snap, task_ids, slice_fields),
        multilabel=snap.cfg.multiple,
        basis=basis,
    )
    return task_ids, pool, probs


def _slices(
    snap: Snapshot, task_ids: NDArray[np.int64], configured: Sequence[str] | None
) -> NDArray[np.int64] | None:
    columns = slice_columns(snap.tasks, task_ids, configured, image_key=snap.cfg.value_key)
    return slice_ids(list(columns.values())) if columns else None


def copy_search_head(settings: Settings) -> int | None:
    """How many of the queue's first positions are searched for near-copies of labeled items:
    twice what a cycle pushes, so the head and its top-ups between two cycles never serve one;
    None (every item) when the whole queue is pushed."""
    top_k = settings.strategy.push_top_k
    return None if top_k is None else COPY_HEAD_FACTOR * top_k


def score_stage(settings: Settings, scored_pool: tuple[NDArray[np.int64], Pool, Any]) -> Scored:
    task_ids, pool, probs = scored_pool
    strategy = settings.strategy
    limit: AbstractContextManager[None] = (
        threads(strategy.score_threads) if strategy.score_threads else nullcontext()
    )
    with limit:
        priority = _prioritize(settings, pool)
        if strategy.near_duplicates_last and pool.embeddings is not None:
            priority = demote_copies(
                priority,
                pool.embeddings,
                pool.labeled,
                threshold=settings.diagnosis.near_duplicate_similarity,
                seed=settings.model.seed,
                head=copy_search_head(settings),
                basis=pool.basis,
                mean=pool.embedding_mean,
            )
    return Scored(task_ids, pool, priority, probs)


def _prioritize(settings: Settings, pool: Pool) -> Priority:
    strategy = settings.strategy
    return prioritize(
        pool,
        strategy.weights,
        rng=np.random.default_rng(settings.model.seed),
        batch_size=strategy.batch_size,
        diversity=strategy.diversity,
        n_clusters=strategy.n_clusters,
        cold_start_labels=strategy.cold_start_labels,
        review_share=strategy.review_share,
        fade_after=strategy.fade_after,
    )
