"""Combine signals into one priority for every item: the labeling queue and the review queue.

1. Phase. While the pool has no probabilities, or embeddings exist and fewer than
   ``cold_start_labels`` items are labeled, the queue is the cold-start ordering
   (:mod:`strategies.coldstart`; random when there are no embeddings either). Otherwise the
   model-based signals take over (phase "model"). Weights without any model-based signal
   (random, coverage, typicality alone) need no cold start: they order the queue from the start.
2. Fusion. Each weighted labeling signal is rank-normalized over the unlabeled items (percentile in
   [0, 1], ties averaged), so its scale does not matter; the combined score is the weighted mean.
   Signals whose inputs are missing are skipped and reported in ``Priority.skipped``. A signal
   named in ``fade_after`` keeps its weight up to that many labels and then fades as
   ``weight * fade_after / labels`` (:func:`faded_weights`): coverage matters while labels are
   scarce, then gives way to the model's uncertainty.
3. Diversity. The top ``ROUND_ROBIN_WINDOW * batch_size`` items are reordered so a batch spreads
   over clusters: ``"round_robin"`` takes every cluster's best item before any cluster's second
   (Cluster-Margin style); ``"ranked_batch"`` trades score against distance to everything labeled or
   already picked (Cardoso et al.'s ranked batch, as in modAL); ``"none"`` keeps the score order.
4. Review. Weighted review signals (default: confident learning and annotator disagreement, where
   their inputs exist) are fused the same way over the labeled items; each item's reason is the
   signal contributing most.
5. One batch, one scale (ActiveLab's idea): relabel candidates (labeled items with evidence of a
   problem, above a signal's ``alarm``) and new items are merged by their fused percentile scores,
   with at most ``round(review_share * batch_size)`` relabels per batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata

from strategies import REGISTRY
from strategies.base import IntArray, Kind, Pool, eligible, top_k
from strategies.coldstart import cold_start_scores
from strategies.coverage import cluster_embeddings, nearest_labeled_distance, within_cluster_rank

Diversity = Literal["round_robin", "ranked_batch", "none"]
Phase = Literal["cold_start", "model"]
FloatVec = NDArray[np.float64]

#: Diversity reorders this many candidates per batch slot (Cluster-Margin uses 10).
ROUND_ROBIN_WINDOW = 10
#: Review signals used when ``weights`` names none.
DEFAULT_REVIEW_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"confident_learning": 1.0, "annotator_disagreement": 1.0}
)


@dataclass(frozen=True, eq=False)
class Priority:
    """Everything the loop pushes to Label Studio and the admin preview shows.

    Attributes:
        order: (m,) all unlabeled indices, label first first.
        priority: (n,) float64 position of each unlabeled item in ``order`` (0 = first; Label
            Studio serves ascending scores); NaN for labeled items.
        breakdown: signal name -> (n,) weighted rank-normalized contribution (sums to the fused
            score on unlabeled items).
        clusters: (n,) int64 cluster id used for diversity (all 0 without embeddings).
        phase: "cold_start" or "model".
        review_order: (r,) labeled indices, most suspicious first.
        review_scores: (r,) fused review score of those items, in [0, 1].
        review_reasons: (r,) name of the signal contributing most to each item's review score.
        batch: (b,) the next batch, relabel candidates and new items merged on one scale.
        batch_is_review: (b,) True where the batch item is a relabel candidate.
        skipped: signal name -> why it was not used (missing inputs, multi-label).
        weights: the labeling signals this order used and their weights after fading (positive
            weights of signals the pool could score; empty in the cold start).
    """

    order: IntArray
    priority: FloatVec
    breakdown: Mapping[str, FloatVec]
    clusters: IntArray
    phase: Phase
    review_order: IntArray
    review_scores: FloatVec
    review_reasons: tuple[str, ...]
    batch: IntArray
    batch_is_review: NDArray[np.bool_]
    skipped: Mapping[str, str]
    weights: Mapping[str, float]


def faded_weights(
    weights: Mapping[str, float], fade_after: Mapping[str, int | None], n_labeled: int
) -> dict[str, float]:
    """``weights`` with every signal in ``fade_after`` scaled by ``min(1, fade_after / n_labeled)``.

    So a signal fading after 50 labels has its full weight up to 50 labels, half at 100 and a tenth
    at 500; signals not named (or named with None) keep their weight.
    """
    out = dict(weights)
    for name, after in fade_after.items():
        if after is not None and name in out and n_labeled > after:
            out[name] *= after / n_labeled
    return out


def rank_normalize(scores: NDArray[np.floating], candidates: IntArray) -> FloatVec:
    """(n,) percentile of each candidate's score in [0, 1] (1 = highest, ties averaged), 0 else.

    Args:
        scores: (n,) raw scores, higher = more important.
        candidates: (m,) indices to rank among.
    """
    out = np.zeros(scores.shape[0], dtype=np.float64)
    m = candidates.shape[0]
    if m == 1:
        out[candidates] = 1.0
    elif m > 1:
        out[candidates] = (rankdata(scores[candidates], method="average") - 1.0) / (m - 1.0)
    return out


def fuse(
    signal_scores: Mapping[str, FloatVec],
    weights: Mapping[str, float],
    candidates: IntArray,
    *,
    n: int,
) -> tuple[FloatVec, dict[str, FloatVec]]:
    """Weighted mean of rank-normalized signals over ``candidates``.

    Args:
        signal_scores: name -> (n,) raw scores; names without a positive weight are ignored.
        weights: name -> weight >= 0.
        candidates: (m,) indices the signals are ranked among.
        n: pool size.

    Returns:
        (n,) fused score in [0, 1] (0 outside candidates) and name -> (n,) contribution.
    """
    used = {name: float(weights.get(name, 0.0)) for name in signal_scores}
    used = {name: w for name, w in used.items() if w > 0}
    total = sum(used.values())
    fused = np.zeros(n, dtype=np.float64)
    breakdown: dict[str, FloatVec] = {}
    for name, weight in used.items():  # one pass per signal, vectorized over items
        breakdown[name] = weight / total * rank_normalize(signal_scores[name], candidates)
        fused += breakdown[name]
    return fused, breakdown


def _score_signals(
    pool: Pool, names: Mapping[str, float], kind: Kind, *, rng: np.random.Generator
) -> tuple[dict[str, FloatVec], dict[str, str]]:
    scores: dict[str, FloatVec] = {}
    skipped: dict[str, str] = {}
    for name, weight in names.items():
        info = REGISTRY[name]
        if info.kind != kind or weight <= 0:
            continue
        reason = info.unavailable(pool)
        if reason is not None:
            skipped[name] = reason
            continue
        scores[name] = np.asarray(info.score(pool, rng=rng), dtype=np.float64)
    return scores, skipped


def _check_weights(weights: Mapping[str, float], fade_after: Mapping[str, int | None]) -> None:
    unknown = sorted((set(weights) | set(fade_after)) - set(REGISTRY))
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}; allowed: {sorted(REGISTRY)}")
    negative = sorted(name for name, w in weights.items() if not w >= 0)
    if negative:
        raise ValueError(f"weights must be >= 0, got {negative}")
    too_small = sorted(
        name for name, labels in fade_after.items() if labels is not None and not labels >= 1
    )
    if too_small:
        raise ValueError(f"fade_after must be >= 1 label, got {too_small}")
    review = sorted(name for name in fade_after if REGISTRY[name].kind != "label")
    if review:
        raise ValueError(f"fade_after applies to labeling signals only, not {review}")


def round_robin(order: IntArray, scores: FloatVec, clusters: IntArray, *, window: int) -> IntArray:
    """Reorder the first ``window`` items so each cluster's best comes before any cluster's second.

    Args:
        order: (m,) candidates, best first.
        scores: (n,) fused scores.
        clusters: (n,) cluster ids.
        window: how many leading items to reorder; the rest keep their order.
    """
    head, tail = order[:window], order[window:]
    within = within_cluster_rank(scores, clusters, head)[head]
    position = np.arange(head.shape[0])
    return np.concatenate((head[np.lexsort((position, within))], tail))


def ranked_batch(
    order: IntArray,
    scores: FloatVec,
    embeddings: NDArray[np.floating],
    labeled: NDArray[np.bool_],
    *,
    batch_size: int,
    window: int,
) -> IntArray:
    """Pick ``batch_size`` of the first ``window`` items by score traded against novelty.

    Each pick maximizes ``alpha * (1 - similarity) + (1 - alpha) * score`` where similarity is
    ``1 / (1 + distance)`` to the nearest labeled or already picked item and ``alpha`` the unlabeled
    fraction of the pool (Cardoso et al., 2017; modAL's ranked batch). Picks come first, then the
    rest in score order.
    """
    head, tail = order[:window], order[window:]
    alpha = 1.0 - float(labeled.mean()) if labeled.size else 1.0
    points = embeddings[head]
    if labeled.any():
        dist = nearest_labeled_distance(embeddings, labeled)[head]
    else:
        dist = np.full(head.shape[0], np.inf)
    utility = scores[head]
    taken = np.zeros(head.shape[0], dtype=bool)
    picks = []
    for _ in range(min(batch_size, head.shape[0])):  # batch picks, each vectorized over the window
        value = alpha * (1.0 - 1.0 / (1.0 + dist)) + (1.0 - alpha) * utility
        best = int(np.argmax(np.where(taken, -np.inf, value)))
        picks.append(best)
        taken[best] = True
        dist = np.minimum(dist, np.linalg.norm(points - points[best], axis=1))
    rest = np.flatnonzero(~taken)
    return np.concatenate((head[np.asarray(picks, dtype=np.int64)], head[rest], tail))


def _model_clusters(pool: Pool, *, rng: np.random.Generator, n_clusters: int | None) -> IntArray:
    if pool.clusters is not None:
        return pool.clusters
    if pool.embeddings is None:
        return np.zeros(pool.n, dtype=np.int64)
    return cluster_embeddings(pool.embeddings, n_clusters=n_clusters, rng=rng).labels


def _label_queue(
    pool: Pool,
    weights: Mapping[str, float],
    *,
    rng: np.random.Generator,
    batch_size: int,
    diversity: Diversity,
    n_clusters: int | None,
) -> tuple[IntArray, FloatVec, dict[str, FloatVec], IntArray, dict[str, str]]:
    """Model phase: fuse the labeling signals and apply batch diversity."""
    clusters = _model_clusters(pool, rng=rng, n_clusters=n_clusters)
    scored_pool = pool.with_clusters(clusters) if pool.embeddings is not None else pool
    scores, skipped = _score_signals(scored_pool, weights, "label", rng=rng)
    candidates = eligible(pool, "label")
    fused, breakdown = fuse(scores, weights, candidates, n=pool.n)
    order = top_k(fused, candidates, candidates.shape[0], rng=rng).indices
    window = ROUND_ROBIN_WINDOW * batch_size
    if diversity == "round_robin":
        order = round_robin(order, fused, clusters, window=window)
    elif diversity == "ranked_batch" and pool.embeddings is not None:
        order = ranked_batch(
            order, fused, pool.embeddings, pool.labeled, batch_size=batch_size, window=window
        )
    elif diversity == "ranked_batch":
        skipped["ranked_batch"] = "needs embeddings"
    return order, fused, breakdown, clusters, skipped


def _cold_queue(
    pool: Pool, *, rng: np.random.Generator, batch_size: int
) -> tuple[IntArray, FloatVec, dict[str, FloatVec], IntArray]:
    """Cold-start phase: TypiClust-style order from embeddings, or random without them."""
    candidates = eligible(pool, "label")
    if pool.embeddings is None:
        scores, name = rng.random(pool.n), "random"
        clusters: IntArray = np.zeros(pool.n, dtype=np.int64)
    else:
        n_clusters = int(pool.labeled.sum()) + batch_size
        scores, clusters = cold_start_scores(
            pool.embeddings, pool.labeled, n_clusters=n_clusters, rng=rng
        )
        name = "cold_start"
    fused = rank_normalize(scores, candidates)
    order = top_k(scores, candidates, candidates.shape[0], rng=rng).indices
    return order, fused, {name: fused}, clusters


def review_queue(
    pool: Pool, weights: Mapping[str, float], *, rng: np.random.Generator
) -> tuple[IntArray, FloatVec, tuple[str, ...], NDArray[np.bool_], dict[str, str]]:
    """Rank the labeled items for review.

    Args:
        pool: the validated pool.
        weights: name -> weight; review signals among them are used, else
            :data:`DEFAULT_REVIEW_WEIGHTS` where their inputs exist.

    Returns:
        review order (r,), fused scores (r,), reasons (r,), evidence (r,) (some signal above its
        alarm) and the skipped signals.
    """
    chosen = {n: w for n, w in weights.items() if REGISTRY[n].kind == "review" and w > 0}
    defaults = not chosen
    if defaults:
        chosen = {
            n: w for n, w in DEFAULT_REVIEW_WEIGHTS.items() if REGISTRY[n].unavailable(pool) is None
        }
    scores, skipped = _score_signals(pool, chosen, "review", rng=rng)
    candidates = eligible(pool, "review")
    fused, breakdown = fuse(scores, chosen, candidates, n=pool.n)
    order = top_k(fused, candidates, candidates.shape[0], rng=rng).indices
    if not breakdown:
        empty = np.zeros(order.shape[0], dtype=bool)
        return order, fused[order], ("",) * order.shape[0], empty, skipped
    names = list(breakdown)
    contributions = np.stack([breakdown[name][order] for name in names])
    reasons = tuple(names[i] for i in contributions.argmax(axis=0))
    alarms = [scores[name][order] > (REGISTRY[name].alarm or 0.0) for name in names]
    evidence = np.logical_or.reduce(alarms) if alarms else np.zeros(order.shape[0], dtype=bool)
    return order, fused[order], reasons, evidence, {} if defaults else skipped


def merge_batch(
    new_items: IntArray,
    new_scores: FloatVec,
    review_items: IntArray,
    review_scores: FloatVec,
    *,
    batch_size: int,
    review_share: float,
) -> tuple[IntArray, NDArray[np.bool_]]:
    """One batch from both queues, ordered on one scale, relabels capped at the share.

    Args:
        new_items: (m,) unlabeled items in queue order; new_scores (m,) their fused scores.
        review_items: (r,) relabel candidates in order; review_scores (r,) their fused scores.
        batch_size: size of the batch.
        review_share: at most ``round(review_share * batch_size)`` relabels.

    Returns:
        (b,) batch indices and (b,) True where the item is a relabel candidate.
    """
    n_review = min(round(review_share * batch_size), review_items.shape[0])
    n_new = min(batch_size - n_review, new_items.shape[0])
    # Running minimum: new items keep their (diversified) queue order under a stable sort.
    new_values = np.minimum.accumulate(new_scores[:n_new]) if n_new else new_scores[:0]
    items = np.concatenate((review_items[:n_review], new_items[:n_new]))
    values = np.concatenate((review_scores[:n_review], new_values))
    is_review = np.arange(items.shape[0]) < n_review
    order = np.argsort(-values, kind="stable")
    return items[order], is_review[order]


def _needs_model(weights: Mapping[str, float]) -> bool:
    """Whether some weighted labeling signal needs a model (weights of random, coverage or
    typicality alone order the queue from the first item, with no cold start)."""
    return any(
        w > 0 and REGISTRY[name].kind == "label" and REGISTRY[name].needs & {"probs", "committee"}
        for name, w in weights.items()
    )


def prioritize(
    pool: Pool,
    weights: Mapping[str, float],
    *,
    rng: np.random.Generator,
    batch_size: int = 100,
    diversity: Diversity = "round_robin",
    n_clusters: int | None = None,
    cold_start_labels: int = 20,
    review_share: float = 0.1,
    fade_after: Mapping[str, int | None] | None = None,
) -> Priority:
    """Order every unlabeled item for labeling and every labeled item for review.

    Args:
        pool: the validated pool.
        weights: signal name -> weight >= 0 (names from :data:`strategies.REGISTRY`).
        rng: every random choice (k-means seeds, ties) comes from it.
        batch_size: items per labeling batch; sets the diversity window and ``batch``.
        diversity: "round_robin", "ranked_batch" or "none" (see the module docstring).
        n_clusters: clusters for coverage and diversity; ``default_n_clusters`` rule when None.
        cold_start_labels: below this many labels (with embeddings) the cold start orders the queue.
        review_share: largest fraction of ``batch`` given to relabel candidates.
        fade_after: signal name -> labels after which its weight fades (:func:`faded_weights`);
            None for a signal that never fades.

    Raises:
        ValueError: unknown signal, negative weight, fade_after below 1, bad batch size or share.
    """
    fade_after = fade_after or {}
    _check_weights(weights, fade_after)
    if batch_size < 1 or not 0.0 <= review_share <= 1.0:
        raise ValueError(
            f"need batch_size >= 1 and 0 <= review_share <= 1, got {batch_size}, {review_share}"
        )
    n_labeled = int(pool.labeled.sum())
    cold = _needs_model(weights) and (
        pool.probs is None or (pool.embeddings is not None and n_labeled < cold_start_labels)
    )
    skipped: dict[str, str] = {}
    used = {} if cold else faded_weights(weights, fade_after, n_labeled)
    if cold:
        order, fused, breakdown, clusters = _cold_queue(pool, rng=rng, batch_size=batch_size)
    else:
        order, fused, breakdown, clusters, skipped = _label_queue(
            pool,
            used,
            rng=rng,
            batch_size=batch_size,
            diversity=diversity,
            n_clusters=n_clusters,
        )
    review, review_scores, reasons, evidence, review_skipped = review_queue(pool, weights, rng=rng)
    batch, is_review = merge_batch(
        order,
        fused[order],
        review[evidence],
        review_scores[evidence],
        batch_size=batch_size,
        review_share=review_share,
    )
    priority = np.full(pool.n, np.nan)
    priority[order] = np.arange(order.shape[0], dtype=np.float64)
    return Priority(
        order=order,
        priority=priority,
        breakdown=breakdown,
        clusters=clusters,
        phase="cold_start" if cold else "model",
        review_order=review,
        review_scores=review_scores,
        review_reasons=reasons,
        batch=batch,
        batch_is_review=is_review,
        skipped={**skipped, **review_skipped},
        weights={name: used[name] for name in breakdown if name in used},
    )
