"""Neighbours above a cosine bar in embedding space, through a nearest-neighbour index.

Every search here answers "which (query, base) pairs of unit vectors have cosine >= t", used for
near-duplicates (the diagnosis) and near-copies of labeled items (the queue). For unit vectors
``cos >= t`` is ``|x - y|^2 <= 2 - 2t``, so it is a range search. The index works on a reduced
vector that can only shrink distances: the projection on at most :data:`DIMS` principal
components plus, as one more coordinate, the length of what the projection leaves out
(``|P(x - y)|^2 + (|Rx| - |Ry|)^2 <= |x - y|^2``). Every true pair is therefore a candidate;
candidates are confirmed on the full vectors, so nothing above the bar is lost in the reduction
and nothing below it is returned.

Small searches (at most :data:`FLAT_MAX_PAIRS` query-base pairs) compare every pair of reduced
vectors: exact. Larger ones go through an inverted file: cells around randomly drawn base items,
each base item filed under its nearest cell, each query compared with the items of its
:data:`NPROBE` nearest cells (one matrix product per cell). That is the only approximate step: a
pair is missed only when the copy is filed under a cell the query does not probe.
``benchmarks/bench_dashboard.py`` measures the recall against exact search (faiss's
``IndexIVFFlat`` was measured too: 4x slower here, its scan does not run on BLAS). Pure
functions: arrays in, arrays out; the cells come from ``seed``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA

#: Principal components the index works on (plus one coordinate for the rest of the vector).
DIMS = 128
#: Rows the principal components are fitted on.
PCA_SAMPLE = 20_000
#: Up to this many query-base pairs every pair is compared (exact).
FLAT_MAX_PAIRS = 20_000_000
#: Cells of the inverted file (this many times the square root of the base size) and cells
#: probed per query.
CELLS_PER_ROOT = 4
NPROBE = 16
#: Rows compared at once (a block is BLOCK x cell size, or BLOCK x n when exact).
BLOCK = 1024

Pairs = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]


def _empty() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _reducer(x: NDArray[np.float32], seed: int) -> NDArray[np.float32] | None:
    """(k, d) orthonormal rows spanning the leading components of ``x``, or None to keep ``x``."""
    n, d = x.shape
    if d <= DIMS + 1 or n <= DIMS:
        return None
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, PCA_SAMPLE, replace=False)] if n > PCA_SAMPLE else x
    pca = PCA(DIMS, svd_solver="randomized", random_state=seed).fit(sample)
    return np.ascontiguousarray(pca.components_, dtype=np.float32)


def _reduce(x: NDArray[np.float32], basis: NDArray[np.float32] | None) -> NDArray[np.float32]:
    """Reduced vectors whose distances never exceed those of the unit vectors ``x``."""
    if basis is None:
        return np.ascontiguousarray(x)
    projected = x @ basis.T
    rest = np.sqrt(np.maximum(1.0 - np.einsum("ij,ij->i", projected, projected), 0.0))
    return np.ascontiguousarray(np.column_stack((projected, rest)), dtype=np.float32)


def _top_cells(z: NDArray[np.float32], centres: NDArray[np.float32], k: int) -> NDArray[np.int64]:
    """(n, k) the ``k`` centres most similar to each row (blockwise)."""
    out = np.empty((len(z), k), dtype=np.int64)
    for start in range(0, len(z), BLOCK):
        sims = z[start : start + BLOCK] @ centres.T
        out[start : start + BLOCK] = (
            np.argmax(sims, axis=1)[:, None] if k == 1 else np.argpartition(-sims, k - 1)[:, :k]
        )
    return out


def _candidates(
    zq: NDArray[np.float32], zb: NDArray[np.float32], bar: float, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(query, base) rows whose reduced vectors have inner product >= ``bar``."""
    n = len(zb)
    cells = int(CELLS_PER_ROOT * np.sqrt(n))
    groups: list[tuple[NDArray[np.intp], NDArray[np.intp]]]
    if len(zq) * n <= FLAT_MAX_PAIRS or cells <= 2 * NPROBE:
        groups = [(np.arange(len(zq)), np.arange(n))]
    else:
        # Cells around randomly drawn items (no k-means to pay for: the probing, not the cells'
        # balance, decides what a query reaches); a query meets the items of its NPROBE nearest.
        centres = zb[np.random.default_rng(seed).choice(n, cells, replace=False)]
        home = _top_cells(zb, centres, 1)[:, 0]
        probes = _top_cells(zq, centres, NPROBE).ravel()
        by_home = np.argsort(home, kind="stable")
        home_starts = np.searchsorted(home[by_home], np.arange(cells + 1))
        by_probe = np.argsort(probes, kind="stable")
        probe_starts = np.searchsorted(probes[by_probe], np.arange(cells + 1))
        groups = [
            (
                by_probe[probe_starts[c] : probe_starts[c + 1]] // NPROBE,
                by_home[home_starts[c] : home_starts[c + 1]],
            )
            for c in range(cells)
        ]
    rows, cols = [], []
    for queries, members in groups:
        if not len(queries) or not len(members):
            continue
        base = zb[members].T
        for start in range(0, len(queries), BLOCK):
            q = queries[start : start + BLOCK]
            i, j = np.nonzero(zq[q] @ base >= bar)
            rows.append(q[i])
            cols.append(members[j])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def unit_pairs(
    queries: NDArray[np.float32],
    base: NDArray[np.float32],
    *,
    threshold: float,
    seed: int = 0,
    same: bool = False,
    directions: NDArray[np.float32] | None = None,
) -> Pairs:
    """(query row, base row, cosine) of every pair with cosine >= ``threshold``.

    Args:
        queries: (m, d) unit vectors.
        base: (n, d) unit vectors.
        threshold: the cosine bar.
        seed: fixes the principal components' sample and the cells.
        same: ``queries`` is ``base``: each pair once, as (lower row, higher row), never an item
            with itself.
        directions: (k, d) orthonormal rows to reduce on (at most :data:`DIMS` are used) instead
            of the principal components of ``base`` fitted here. Any orthonormal rows keep the
            search exact; directions that carry the vectors' spread leave fewer candidates.
    """
    if not len(queries) or not len(base):
        return _empty()
    if directions is not None and directions.shape[1] == base.shape[1] > DIMS + 1:
        basis: NDArray[np.float32] | None = np.ascontiguousarray(directions[:DIMS], np.float32)
    else:
        basis = _reducer(base, seed)
    zb = _reduce(base, basis)
    zq = zb if same else _reduce(queries, basis)
    # Reduced vectors are unit vectors whose distances never exceed the full ones, so their inner
    # product is at least the full cosine; a hair below the bar absorbs float32 rounding, and the
    # confirmation on the full vectors removes what it adds.
    i, j = _candidates(zq, zb, threshold - 1e-4, seed)
    if same:
        i, j = np.minimum(i, j), np.maximum(i, j)
        pair = np.unique(i[i < j] * len(base) + j[i < j])
        i, j = pair // len(base), pair % len(base)
    sims = np.einsum("ij,ij->i", queries[i], base[j]) if len(i) else np.zeros(0, np.float32)
    keep = sims >= threshold
    return i[keep], j[keep], sims[keep].astype(np.float32)


def brute_force_pairs(
    queries: NDArray[np.float32], base: NDArray[np.float32], *, threshold: float, same: bool = False
) -> Pairs:
    """What :func:`unit_pairs` finds, by comparing every pair on the full vectors (blockwise):
    the reference it is measured and tested against."""
    rows, cols, values = [], [], []
    for start in range(0, len(queries), 1024):
        sims = queries[start : start + 1024] @ base.T
        i, j = np.nonzero(sims >= threshold)
        keep = i + start < j if same else np.ones(len(i), dtype=bool)
        rows.append(i[keep] + start)
        cols.append(j[keep])
        values.append(sims[i[keep], j[keep]])
    if not rows:
        return _empty()
    return (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(cols).astype(np.int64),
        np.concatenate(values).astype(np.float32),
    )
