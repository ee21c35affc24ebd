"""Cold start: the first labels from embeddings alone (TypiClust-style typicality + coverage).

Before a model exists, uncertainty means nothing; the first labels should be typical items (dense
regions, not outliers) spread over the data. TypiClust (Hacohen et al., 2022) clusters the pool
into ``L + B`` clusters (L labels so far, B the batch) and takes the most typical item of the
largest clusters without labels. We do the same for a whole ordering at once: each cluster's
unlabeled items are ranked (its more typical half first, in random order: see
:func:`_typical_half_first` for why not the single most typical), and an item of rank r in a
cluster with l_c labels is taken in round ``l_c + r``; within a round larger clusters go first.
So the first picks are typical items of the largest uncovered clusters, one per cluster, before
any cluster gets a second.

Hand-over rule (applied by :func:`strategies.combine.prioritize`): the cold start orders the queue
while the pool has no probabilities or fewer than ``cold_start_labels`` labels (default 20, about
two per class for ten classes); from then on the model-based signals do.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA

from strategies.base import (
    Basis,
    FloatArray,
    IntArray,
    Pool,
    Selection,
    Signal,
    eligible,
    need,
    top_k,
)
from strategies.coverage import (
    KNN_MAX,
    SEED_SAMPLE,
    Clustering,
    cluster_embeddings,
    mean_knn_distance,
    within_cluster_rank,
)

TYPICALITY_NEIGHBORS = 20
#: Clusters per batch slot beyond the labels so far: TypiClust uses ``L + B`` clusters; more
#: clusters than the batch keep one nuisance-dominated cluster from holding a class's only pick.
CLUSTER_RATIO = 2
#: The cold start clusters in this many PCA components (k-means in 1,280 dimensions is slower
#: and no better). Whitening them, so the strongest visual factor (background, colour) weighs no
#: more than the others, measured worse on the generated nuisance set (``nuisance`` in
#: benchmarks/bench_label_efficiency.py: 0.72 vs 0.74 at 20 labels, 10 seeds), so it is not done.
REDUCE_DIMS = 64
#: Directions a shared :class:`~strategies.base.Basis` holds (:func:`principal_basis`): enough for
#: the near-copy index's 128 as well as the cold start's 64.
BASIS_DIMS = 128
#: Above this many items the TypiClust order is computed on a uniform sample of this many (see
#: :func:`cold_start_order`); at or below it, on every item.
TYPICLUST_SAMPLE = 5_000


def typicality_scores(
    embeddings: FloatArray,
    *,
    n_neighbors: int = TYPICALITY_NEIGHBORS,
    clustering: Clustering | None = None,
) -> NDArray[np.float64]:
    """(n,) TypiClust typicality: inverse mean distance to the nearest neighbours.

    Pools above :data:`strategies.coverage.KNN_MAX` items use the inverse distance to the item's
    cluster centre instead (exact k-NN is quadratic), which needs ``clustering``.
    """
    n = embeddings.shape[0]
    if n > KNN_MAX and clustering is not None:
        return 1.0 / (clustering.distances + 1e-12)
    return 1.0 / (mean_knn_distance(embeddings, n_neighbors=n_neighbors) + 1e-12)


def _typical_half_first(
    typical: NDArray[np.float64], clusters: IntArray, rng: np.random.Generator
) -> NDArray[np.float64]:
    """(n,) a random order inside each cluster with its more typical half first.

    TypiClust takes the single most typical item of a cluster. Where the embedding follows a
    nuisance (background, colour), the densest items are the plainest ones, and those are often
    one class: on the generated nuisance set in raw pixels the most typical items covered 2.3 of
    4 classes in 10 labels, random 3.6. Typicality is therefore used only to leave out the
    outlying half; inside the typical half the pick is random (3.6 classes there, and as good as
    the most typical item on pretrained embeddings within 2 points at 20 labels).
    """
    median = np.zeros(int(clusters.max(initial=-1)) + 1)
    for c in np.unique(clusters):  # clusters, not items
        median[c] = np.median(typical[clusters == c])
    return (typical >= median[clusters]) + rng.random(typical.shape[0])


def cold_start_scores(
    embeddings: FloatArray,
    labeled: NDArray[np.bool_],
    *,
    n_clusters: int,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float64], IntArray]:
    """Per-item cold-start score (higher = label earlier) and the clusters it used.

    Args:
        embeddings: (n, d) feature vectors.
        labeled: (n,) True where labeled.
        n_clusters: K (TypiClust uses labels so far + batch size).
        rng: seeds k-means.

    Returns:
        (n,) float64 ``share_c - round`` of each unlabeled item (-(n + 1) for labeled items) and
        (n,) clusters.
    """
    clustering = cluster_embeddings(embeddings, n_clusters=max(n_clusters, 1), rng=rng)
    typical = typicality_scores(embeddings, clustering=clustering)
    candidates = np.flatnonzero(~labeled).astype(np.int64)
    within = within_cluster_rank(
        _typical_half_first(typical, clustering.labels, rng), clustering.labels, candidates
    )
    sizes = np.bincount(clustering.labels)
    n_labeled = np.bincount(clustering.labels[labeled], minlength=sizes.shape[0])
    rounds = n_labeled[clustering.labels] + within
    # Shares are < 1, so they only order clusters inside a round.
    share = sizes[clustering.labels] / (embeddings.shape[0] + 1.0)
    scores = np.where(labeled, -np.inf, -rounds + share)
    return np.maximum(scores, -float(embeddings.shape[0] + 1)), clustering.labels


def principal_basis(
    embeddings: FloatArray, *, dims: int = BASIS_DIMS, rng: np.random.Generator
) -> Basis | None:
    """The ``dims`` leading principal directions of the embeddings, fitted in float32 on a uniform
    sample of :data:`strategies.coverage.SEED_SAMPLE` items (every item when fewer); None when
    the embeddings have no more than ``dims`` dimensions or too few items to fit them.

    The directions of largest variance are as well estimated from 4,000 items as from 100,000,
    and a fit on all of a 100,000 x 1,280 pool cost 6.8 s of a cycle.
    """
    n, d = embeddings.shape
    k = min(dims, n - 1)
    if k < 1 or d <= k:
        return None
    rows = np.sort(rng.choice(n, size=SEED_SAMPLE, replace=False)) if n > SEED_SAMPLE else None
    x = np.asarray(embeddings if rows is None else embeddings[rows], dtype=np.float32)
    pca = PCA(k, random_state=int(rng.integers(2**31 - 1))).fit(x)
    return Basis(pca.mean_.astype(np.float32), pca.components_.astype(np.float32))


def reduce(
    embeddings: FloatArray,
    *,
    dims: int = REDUCE_DIMS,
    rng: np.random.Generator,
    basis: Basis | None = None,
) -> NDArray[np.float64]:
    """(n, <= dims) PCA components of the embeddings (unchanged when they have fewer dims).

    Pools above :data:`strategies.coverage.SEED_SAMPLE` items are projected on ``basis`` (the
    pool's shared directions) when it holds ``dims`` of them, else on :func:`principal_basis`'s
    directions fitted here in float32 on a sample (half the time of the SVD at 10,000 x 1280;
    the components differ in the 6th digit). Smaller pools fit their own, in float64, on every
    item.
    """
    n = embeddings.shape[0]
    k = min(dims, n - 1)
    if k < 1 or embeddings.shape[1] <= k:
        return np.asarray(embeddings, dtype=np.float64)
    if n <= SEED_SAMPLE:
        pca = PCA(k, random_state=int(rng.integers(2**31 - 1)))
        return np.asarray(pca.fit_transform(np.asarray(embeddings, np.float64)), dtype=np.float64)
    usable = basis is not None and basis.dims >= k and basis.dim == embeddings.shape[1]
    directions = basis if usable else principal_basis(embeddings, dims=k, rng=rng)
    assert directions is not None  # k < n and k < d here
    return np.asarray(directions.project(embeddings, k), dtype=np.float64)


def cold_start_order(
    embeddings: FloatArray,
    labeled: NDArray[np.bool_],
    *,
    batch_size: int,
    rng: np.random.Generator,
    basis: Basis | None = None,
) -> IntArray:
    """(m,) every unlabeled item in cold-start order, best first.

    TypiClust with ``labels + CLUSTER_RATIO * batch_size`` clusters in the PCA space
    (:func:`reduce`, on ``basis`` where it serves): typical items of the largest uncovered
    clusters first. Pools above :data:`TYPICLUST_SAMPLE` items run it on a uniform sample of that
    many (labeled items included at their rate, so "uncovered" means the same, and clusters hold
    as many items as they would on the whole pool), and the unlabeled items outside the sample
    follow in random order: the queue takes a batch or a share of the horizon from this order,
    far fewer than the sample holds. Clustering 100,000 items into ``labels + 2 B`` clusters
    cost 20 s a cycle; on a 10,000 sample, 1.1 s (half of it the quadratic k-NN typicality).
    """
    n = embeddings.shape[0]
    if n > TYPICLUST_SAMPLE:
        sample = np.sort(rng.choice(n, size=TYPICLUST_SAMPLE, replace=False)).astype(np.int64)
        head = sample[
            cold_start_order(
                embeddings[sample], labeled[sample], batch_size=batch_size, rng=rng, basis=basis
            )
        ]
        rest = np.setdiff1d(np.flatnonzero(~labeled), sample, assume_unique=True)
        order: IntArray = np.concatenate([head, rng.permutation(rest)]).astype(np.int64)
        return order
    space = reduce(embeddings, rng=rng, basis=basis)
    n_clusters = int(labeled.sum()) + CLUSTER_RATIO * max(batch_size, 1)
    scores, _ = cold_start_scores(space, labeled, n_clusters=n_clusters, rng=rng)
    candidates = np.flatnonzero(~labeled).astype(np.int64)
    return top_k(scores, candidates, candidates.shape[0], rng=rng).indices


def cold_start_priority(
    embeddings: FloatArray,
    labeled: NDArray[np.bool_],
    *,
    rng: np.random.Generator,
    n_clusters: int | None = None,
) -> NDArray[np.float64]:
    """(n,) :func:`cold_start_scores` with ``n_clusters`` (default: labels so far + 10)."""
    k = int(labeled.sum()) + 10 if n_clusters is None else n_clusters
    scores, _ = cold_start_scores(embeddings, labeled, n_clusters=k, rng=rng)
    return scores


def cold_start(
    pool: Pool, k: int, *, rng: np.random.Generator, n_clusters: int | None = None
) -> Selection:
    """TypiClust-style picks: typical items of the largest uncovered clusters (needs embeddings).

    Args:
        n_clusters: K; default labels so far + k, as in TypiClust.
    """
    n_labeled = int(pool.labeled.sum())
    clusters = n_labeled + max(k, 1) if n_clusters is None else n_clusters
    embeddings = need(pool, "cold_start", "embeddings")
    scores = cold_start_priority(embeddings, pool.labeled, rng=rng, n_clusters=clusters)
    return top_k(scores, eligible(pool, "label"), k, rng=rng)


TYPICALITY = Signal(
    "typicality",
    "label",
    typicality_scores,
    "dense neighbourhood (inverse mean k-NN distance)",
)
COLD_START = Signal(
    "cold_start",
    "label",
    cold_start_priority,
    "TypiClust-style: typical items of the largest uncovered clusters",
    select=cold_start,
)
