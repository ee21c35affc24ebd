"""The combination: fusion properties (hypothesis), diversity, phases, review queue and batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import make_arrays
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as np_arrays

from strategies import Pool
from strategies.combine import faded_weights, fuse, merge_batch, prioritize, rank_normalize

DEFAULTS = {"entropy": 1.0, "coverage": 0.5, "balance": 0.25}
scores_st = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        *[np_arrays(np.float64, n, elements=st.floats(-5, 5, allow_subnormal=False))] * 3
    )
)


def _ahead(fused: np.ndarray, item: int) -> int:
    return int((fused > fused[item] + 1e-12).sum())


@settings(max_examples=150, deadline=None)
@given(scores=scores_st, other=st.data(), w=st.floats(0.01, 10))
def test_zero_weight_removes_a_signals_influence(scores: Any, other: Any, w: float) -> None:
    a, b, c = scores
    candidates = np.arange(a.shape[0])
    replacement = other.draw(np_arrays(np.float64, a.shape[0], elements=st.floats(-5, 5)))
    fused, breakdown = fuse(
        {"a": a, "b": b, "c": c}, {"a": w, "b": 0.0, "c": 1.0}, candidates, n=a.shape[0]
    )
    again, _ = fuse(
        {"a": a, "b": replacement, "c": c}, {"a": w, "b": 0.0, "c": 1.0}, candidates, n=a.shape[0]
    )
    np.testing.assert_array_equal(fused, again)
    assert "b" not in breakdown
    np.testing.assert_allclose(sum(breakdown.values()), fused)


@settings(max_examples=150, deadline=None)
@given(scores=scores_st, w=st.floats(0.0, 5), extra=st.floats(0.01, 20))
def test_raising_a_weight_never_lowers_that_signals_top_items(
    scores: Any, w: float, extra: float
) -> None:
    a, b, c = scores
    candidates = np.arange(a.shape[0])
    before, _ = fuse(
        {"a": a, "b": b, "c": c}, {"a": w, "b": 1.0, "c": 0.5}, candidates, n=a.shape[0]
    )
    after, _ = fuse(
        {"a": a, "b": b, "c": c}, {"a": w + extra, "b": 1.0, "c": 0.5}, candidates, n=a.shape[0]
    )
    for top in np.flatnonzero(a == a.max()):
        assert _ahead(after, top) <= _ahead(before, top)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), w=st.floats(0.1, 3))
def test_zero_weight_signal_leaves_the_queue_unchanged(seed: int, w: float) -> None:
    pool = Pool(**make_arrays(seed=seed))
    base = prioritize(pool, {"entropy": w}, rng=np.random.default_rng(1), batch_size=5)
    zero = prioritize(
        pool, {"entropy": w, "margin": 0.0, "bald": 0.0}, rng=np.random.default_rng(1), batch_size=5
    )
    np.testing.assert_array_equal(base.order, zero.order)
    assert set(zero.breakdown) == {"entropy"}


def test_rank_normalize_is_scale_free_and_averages_ties() -> None:
    scores = np.array([10.0, 3.0, 3.0, -1.0, 99.0])
    candidates = np.array([0, 1, 2, 3])
    np.testing.assert_allclose(rank_normalize(scores, candidates), [1.0, 0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(
        rank_normalize(np.exp(scores / 10), candidates), rank_normalize(scores, candidates)
    )


def _pool(n_labeled: int, **overrides: Any) -> Pool:
    arrays = make_arrays(n=200, n_labeled=n_labeled)
    arrays.update(overrides)
    return Pool(**arrays)


def test_cold_start_phase_below_the_label_threshold_then_model() -> None:
    rng = np.random.default_rng(0)
    cold = prioritize(_pool(5), DEFAULTS, rng=rng, batch_size=10, cold_start_labels=20)
    model = prioritize(_pool(40), DEFAULTS, rng=rng, batch_size=10, cold_start_labels=20)
    no_probs = _pool(40)
    no_probs = Pool(labels=no_probs.labels, embeddings=no_probs.embeddings)
    assert cold.phase == "cold_start" and set(cold.breakdown) == {"cold_start"}
    assert model.phase == "model" and set(model.breakdown) == set(DEFAULTS)
    assert prioritize(no_probs, DEFAULTS, rng=rng, batch_size=10).phase == "cold_start"


@pytest.mark.parametrize("diversity", ["round_robin", "ranked_batch", "none"])
def test_priority_covers_every_unlabeled_item_once(diversity: Any) -> None:
    pool = _pool(40)
    result = prioritize(pool, DEFAULTS, rng=np.random.default_rng(0), diversity=diversity)
    unlabeled = np.flatnonzero(~pool.labeled)
    np.testing.assert_array_equal(np.sort(result.order), unlabeled)
    np.testing.assert_array_equal(result.priority[result.order], np.arange(unlabeled.shape[0]))
    assert np.isnan(result.priority[pool.labeled]).all()
    assert result.clusters.shape == (pool.n,)
    fused = sum(result.breakdown.values())
    assert fused[result.order[0]] >= np.median(fused[unlabeled])


def test_missing_inputs_are_skipped_and_reported() -> None:
    arrays = make_arrays(n=200, n_labeled=40)
    del arrays["committee"]
    result = prioritize(Pool(**arrays), {"entropy": 1.0, "bald": 1.0}, rng=np.random.default_rng(0))
    assert result.skipped == {"bald": "needs committee, which the pool lacks"}
    assert set(result.breakdown) == {"entropy"}


def test_unknown_or_negative_weights_rejected() -> None:
    with pytest.raises(ValueError, match="unknown signal"):
        prioritize(_pool(40), {"entropyy": 1.0}, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        prioritize(_pool(40), {"entropy": -1.0}, rng=np.random.default_rng(0))


def _duplicate_heavy_pool() -> Pool:
    """60 near-duplicates that are all the most uncertain, 5 other blobs, 1 labeled blob."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=20, size=(7, 4))
    sizes = [60, 30, 30, 30, 30, 30, 30]
    embeddings = np.concatenate(
        [c + 0.1 * rng.normal(size=(s, 4)) for c, s in zip(centers, sizes, strict=True)]
    )
    probs = np.tile([0.7, 0.2, 0.1], (240, 1)) + rng.uniform(0, 0.05, (240, 3))
    probs[:60] = [0.34, 0.33, 0.33]
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.full(240, -1, dtype=np.int64)
    labels[210:] = np.arange(30) % 3
    return Pool(labels=labels, probs=probs, embeddings=embeddings)


def test_duplicate_heavy_batch_gets_spread() -> None:
    pool = _duplicate_heavy_pool()
    blob = np.searchsorted(np.cumsum([60, 30, 30, 30, 30, 30]), np.arange(240), side="right")
    kwargs: Any = {"rng": np.random.default_rng(0), "batch_size": 10, "n_clusters": 7}
    plain = prioritize(pool, {"entropy": 1.0}, diversity="none", **kwargs)
    assert (blob[plain.order[:10]] == 0).all()
    for diversity in ("round_robin", "ranked_batch"):
        spread = prioritize(pool, {"entropy": 1.0}, diversity=diversity, **kwargs)
        assert blob[spread.order[0]] == 0, diversity
        assert len(set(blob[spread.order[:6]])) == 6, diversity


def test_review_queue_puts_planted_errors_first_with_reasons() -> None:
    arrays = make_arrays(n=200, n_labeled=120)
    probs = np.full((200, 4), 0.02)
    probs[np.arange(200), np.arange(200) % 4] = 0.94
    labels = np.where(arrays["labels"] >= 0, np.arange(200) % 4, -1)
    planted = np.array([3, 40, 77])
    labels[planted] = (labels[planted] + 1) % 4
    annotations = np.stack([labels, np.full(200, -1), np.full(200, -1)], axis=1)
    pool = Pool(labels=labels, probs=probs, oos_probs=probs, annotations=annotations)
    result = prioritize(
        pool, {"entropy": 1.0}, rng=np.random.default_rng(0), batch_size=20, review_share=0.25
    )
    assert set(result.review_order[:3]) == set(planted)
    assert result.review_reasons[:3] == ("confident_learning",) * 3
    assert np.all(np.diff(result.review_scores) <= 0)
    assert set(result.batch[result.batch_is_review]) == set(planted)
    assert (~pool.labeled[result.batch[~result.batch_is_review]]).all()
    none = prioritize(
        pool, {"entropy": 1.0}, rng=np.random.default_rng(0), batch_size=20, review_share=0.0
    )
    assert not none.batch_is_review.any() and none.batch.shape == (20,)


def test_merge_batch_caps_relabels_and_keeps_queue_order() -> None:
    batch, is_review = merge_batch(
        np.array([10, 11, 12, 13]),
        np.array([0.9, 0.95, 0.5, 0.4]),
        np.array([1, 2, 3]),
        np.array([0.99, 0.7, 0.6]),
        batch_size=5,
        review_share=0.4,
    )
    assert batch.tolist() == [1, 10, 11, 2, 12]
    assert is_review.tolist() == [True, False, False, True, False]


def test_a_faded_weight_is_full_up_to_its_label_count_then_shrinks_as_labels_grow() -> None:
    weights = {"margin": 1.0, "coverage": 0.5}
    fade = {"coverage": 50}
    assert faded_weights(weights, fade, 0) == weights
    assert faded_weights(weights, fade, 50) == weights
    assert faded_weights(weights, fade, 100) == {"margin": 1.0, "coverage": 0.25}
    assert faded_weights(weights, fade, 500) == {"margin": 1.0, "coverage": 0.05}
    assert faded_weights(weights, {"coverage": None}, 500) == weights
    assert faded_weights(weights, {"coreset": 10}, 500) == weights  # no weight, nothing to fade


def test_prioritize_fuses_with_the_faded_weights() -> None:
    pool = _pool(40)
    weights = {"entropy": 1.0, "coverage": 1.0}
    rng = np.random.default_rng
    faded = prioritize(pool, weights, rng=rng(0), cold_start_labels=0, fade_after={"coverage": 10})
    assert faded.weights == {"entropy": 1.0, "coverage": 0.25}
    # Same order as the explicit weights 1 : 0.25.
    explicit = prioritize(pool, {"entropy": 1.0, "coverage": 0.25}, rng=rng(0), cold_start_labels=0)
    np.testing.assert_array_equal(faded.order, explicit.order)
    np.testing.assert_allclose(faded.breakdown["coverage"], explicit.breakdown["coverage"])
    # Not yet faded: the coverage share of the fused score is 1 / 2, faded it is 0.25 / 1.25.
    full = prioritize(pool, weights, rng=rng(0), cold_start_labels=0, fade_after={"coverage": 40})
    assert full.weights == weights
    np.testing.assert_allclose(faded.breakdown["coverage"], full.breakdown["coverage"] * 0.4)
    assert full.breakdown["coverage"].max() > 0


def test_the_cold_start_uses_no_weights() -> None:
    cold = prioritize(_pool(5), DEFAULTS, rng=np.random.default_rng(0), cold_start_labels=20)
    assert cold.phase == "cold_start" and cold.weights == {}


@pytest.mark.parametrize(
    ("fade_after", "message"),
    [
        ({"coverag": 50}, "unknown signal"),
        ({"coverage": 0}, "fade_after must be >= 1"),
        ({"confident_learning": 5}, "labeling signals only"),
    ],
)
def test_bad_fade_after_is_rejected(fade_after: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prioritize(_pool(40), DEFAULTS, rng=np.random.default_rng(0), fade_after=fade_after)
