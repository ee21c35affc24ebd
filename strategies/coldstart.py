"""Cold start: the first labels from embeddings alone (TypiClust-style typicality + coverage).

Before a model exists, uncertainty means nothing; the first labels should be typical items (dense
regions, not outliers) spread over the data. TypiClust (Hacohen et al., 2022) clusters the pool
into ``L + B`` clusters (L labels so far, B the batch) and takes the most typical item of the
largest clusters without labels. We do the same for a whole ordering at once: each cluster's
unlabeled items are ranked by typicality, and an item of rank r in a cluster with l_c labels is
taken in round ``l_c + r``; within a round larger clusters go first. So the first picks are the
most typical items of the largest uncovered clusters, one per cluster, before any cluster gets a
second.

Hand-over rule (applied by :func:`strategies.combine.prioritize`): the cold start orders the queue
while the pool has no probabilities or fewer than ``cold_start_labels`` labels (default 20, about
two per class for ten classes); from then on the model-based signals do.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.base import FloatArray, IntArray, Pool, Selection, eligible, need, top_k
from strategies.coverage import (
    KNN_MAX,
    Clustering,
    cluster_embeddings,
    mean_knn_distance,
    within_cluster_rank,
)

TYPICALITY_NEIGHBORS = 20


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
    within = within_cluster_rank(typical, clustering.labels, candidates)
    sizes = np.bincount(clustering.labels)
    n_labeled = np.bincount(clustering.labels[labeled], minlength=sizes.shape[0])
    rounds = n_labeled[clustering.labels] + within
    # Shares are < 1, so they only order clusters inside a round.
    share = sizes[clustering.labels] / (embeddings.shape[0] + 1.0)
    scores = np.where(labeled, -np.inf, -rounds + share)
    return np.maximum(scores, -float(embeddings.shape[0] + 1)), clustering.labels


def typicality_pool_scores(pool: Pool, *, rng: np.random.Generator) -> NDArray[np.float64]:
    """(n,) typicality of every item."""
    return typicality_scores(need(pool, "typicality", "embeddings"))


def cold_start_pool_scores(
    pool: Pool, *, rng: np.random.Generator, n_clusters: int | None = None
) -> NDArray[np.float64]:
    """(n,) cold-start quotient with ``n_clusters`` (default: labels so far + 10)."""
    embeddings = need(pool, "cold_start", "embeddings")
    k = int(pool.labeled.sum()) + 10 if n_clusters is None else n_clusters
    scores, _ = cold_start_scores(embeddings, pool.labeled, n_clusters=k, rng=rng)
    return scores


def typicality(pool: Pool, k: int, *, rng: np.random.Generator) -> Selection:
    """The k most typical unlabeled items (densest neighbourhoods; needs embeddings)."""
    return top_k(typicality_pool_scores(pool, rng=rng), eligible(pool, "label"), k, rng=rng)


def cold_start(
    pool: Pool, k: int, *, rng: np.random.Generator, n_clusters: int | None = None
) -> Selection:
    """TypiClust-style picks: typical items of the largest uncovered clusters (needs embeddings).

    Args:
        n_clusters: K; default labels so far + k, as in TypiClust.
    """
    n_labeled = int(pool.labeled.sum())
    clusters = n_labeled + max(k, 1) if n_clusters is None else n_clusters
    scores = cold_start_pool_scores(pool, rng=rng, n_clusters=clusters)
    return top_k(scores, eligible(pool, "label"), k, rng=rng)
