"""Exact and near-duplicate images, duplicates that carry different labels, and duplicates across
data splits (leaks).

Exact duplicates share the sha256 of their image bytes. Near-duplicates are pairs whose centred
embeddings have cosine similarity at or above ``diagnosis.near_duplicate_similarity`` (a resized,
re-encoded or slightly cropped copy of one photo stays far above what two different photos of one
class reach). Pairs come from the neighbour index (:mod:`strategies.neighbours`: a range search on
reduced vectors that can only shrink distances, confirmed on the full embeddings), so 100,000 items
cost seconds and never an (n, n) matrix. Pairs join into groups (connected components).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from backend.diagnosis.schema import DuplicateGroup, Duplicates
from strategies.duplicates import centred_unit
from strategies.neighbours import unit_pairs


def near_pairs(
    embeddings: NDArray[np.floating], *, threshold: float, seed: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    """Pairs (i < j) of items with cosine similarity >= ``threshold`` of their centred embeddings.

    Centring first matters: pooled CNN features are all positive, so raw cosines of unrelated
    images are already high; around the mean only near-copies stay close to 1. The search runs
    through the neighbour index (:func:`strategies.neighbours.unit_pairs`).
    """
    x = centred_unit(embeddings)
    if len(x) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return unit_pairs(x, x, threshold=threshold, seed=seed, same=True)


def exact_pairs(hashes: Sequence[str | None]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pairs (first, other) of items with the same content hash (a star per hash)."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for row, sha in enumerate(hashes):
        if sha:
            by_hash[sha].append(row)
    first = [rows[0] for rows in by_hash.values() for _ in rows[1:]]
    other = [r for rows in by_hash.values() for r in rows[1:]]
    return np.asarray(first, dtype=np.int64), np.asarray(other, dtype=np.int64)


def find_duplicates(
    task_ids: NDArray[np.int64],
    embeddings: NDArray[np.floating],
    label_names: Sequence[str | None],
    *,
    hashes: Sequence[str | None] | None,
    splits: Sequence[str | None] | None,
    threshold: float,
    limit: int,
) -> Duplicates:
    """Duplicate groups: conflicting labels first, then leaks across splits, then the largest.

    Args:
        task_ids: (n,) task ids.
        embeddings: (n, d) embeddings.
        label_names: (n,) the given label of each item (several joined for multi-label), None when
            unlabeled.
        hashes: (n,) sha256 of each image, None where unknown (or no hashes at all).
        splits: (n,) each task's split (e.g. train/test), or None when tasks carry none.
        threshold: cosine similarity at which two embeddings are near-duplicates.
        limit: groups listed.
    """
    n = len(task_ids)
    ei, ej = exact_pairs(hashes) if hashes is not None else (np.zeros(0, np.int64),) * 2
    ni, nj, sims = near_pairs(embeddings, threshold=threshold)
    rows = np.concatenate((ei, ni))
    cols = np.concatenate((ej, nj))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    exact_edge = np.zeros(n, dtype=bool)
    exact_edge[ei], exact_edge[ej] = True, True
    lowest: dict[int, float] = {}
    for a, s in zip(ni.tolist(), sims.tolist(), strict=True):
        c = int(component[a])
        lowest[c] = min(lowest.get(c, 1.0), s)
    sizes = np.bincount(component, minlength=n)
    groups = []
    for c in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(component == c)
        labels = [label_names[m] for m in members]
        given = {lab for lab in labels if lab is not None}
        split_values = [splits[m] for m in members] if splits is not None else None
        member_hashes = {hashes[m] for m in members} if hashes is not None else {None}
        same_bytes = len(member_hashes) == 1 and None not in member_hashes
        groups.append(
            DuplicateGroup(
                id=0,
                kind="exact" if same_bytes else "near",
                tasks=[int(t) for t in task_ids[members]],
                labels=labels,
                splits=split_values,
                conflicting=len(given) > 1,
                leak=split_values is not None and len({s for s in split_values if s}) > 1,
                similarity=1.0 if same_bytes else round(lowest.get(int(c), 1.0), 4),
            )
        )
    groups.sort(key=lambda g: (not g.conflicting, not g.leak, -len(g.tasks), g.tasks[0]))
    numbered = [g.model_copy(update={"id": k}) for k, g in enumerate(groups, start=1)]
    return Duplicates(
        threshold=threshold,
        n_groups=len(groups),
        n_exact=sum(g.kind == "exact" for g in groups),
        n_items=int(sizes[sizes > 1].sum()),
        n_conflicting=sum(g.conflicting for g in groups),
        n_leaks=sum(g.leak for g in groups),
        has_splits=splits is not None,
        groups=numbered[:limit],
        conflicting=[g for g in numbered if g.conflicting],
    )
