"""Planted answers: build data where exactly one answer is right and check it comes back first."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import REGISTRY, Pool
from strategies.coverage import (
    SEED_SAMPLE,
    cluster_coverage,
    cluster_embeddings,
    outlier_scores,
    under_covered_clusters,
)
from strategies.slices import slice_error_rates

RNG = np.random.default_rng


def _confident(n: int, n_classes: int = 3, seed: int = 0) -> np.ndarray:
    """(n, C) confident rows: 0.9 on a random class."""
    rows = np.full((n, n_classes), 0.1 / (n_classes - 1))
    rows[np.arange(n), RNG(seed).integers(n_classes, size=n)] = 0.9
    return rows


def _unlabeled(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64)


def _first(name: str, pool: Pool, k: int = 1, seed: int = 0) -> list[int]:
    return REGISTRY[name](pool, k, rng=RNG(seed)).indices.tolist()


def test_uncertainty_signals_find_their_own_planted_row() -> None:
    probs = _confident(50)
    probs[17] = [0.45, 0.45, 0.10]  # smallest margin, not the flattest
    probs[31] = [0.36, 0.33, 0.31]  # flattest: least confident and highest entropy
    pool = Pool(labels=_unlabeled(50), probs=probs)
    assert _first("margin", pool) == [17]
    assert _first("least_confidence", pool) == [31]
    assert _first("entropy", pool) == [31]
    assert sorted(_first("margin", pool, 2)) == [17, 31]


def test_uncertainty_never_picks_the_uncertain_row_once_labeled() -> None:
    probs = _confident(20)
    probs[4] = [1 / 3, 1 / 3, 1 / 3]
    labels = _unlabeled(20)
    labels[4] = 0
    assert 4 not in _first("entropy", Pool(labels=labels, probs=probs), 19)


def test_multilabel_uncertainty_picks_the_label_near_half() -> None:
    probs = np.full((10, 4), 0.95)
    probs[6, 2] = 0.52
    pool = Pool(labels=_unlabeled(10), probs=probs, multilabel=True)
    for name in ("least_confidence", "margin", "entropy"):
        assert _first(name, pool) == [6], name


def _committee_pool() -> Pool:
    members = np.stack([_confident(30, seed=0)] * 3)
    members[:, 8] = [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]  # members disagree
    members[:, 12] = 1 / 3  # all members unsure alike: aleatoric, not disagreement
    members[2, 21] = [0.05, 0.05, 0.9] if members[0, 21].argmax() != 2 else [0.9, 0.05, 0.05]
    return Pool(labels=_unlabeled(30), committee=members)


def test_bald_prefers_disagreement_over_shared_uncertainty() -> None:
    pool = _committee_pool()
    assert _first("bald", pool) == [8]
    assert REGISTRY["bald"].score(pool, rng=RNG(0))[12] == pytest.approx(0.0, abs=1e-9)


def test_committee_disagreement_signals() -> None:
    pool = _committee_pool()
    assert _first("vote_entropy", pool) == [8]
    assert sorted(_first("vote_entropy", pool, 2)) == [8, 21]
    assert sorted(_first("kl_consensus", pool, 2)) == [8, 21]


def _blobs(sizes: list[int], *, seed: int = 0, spread: float = 0.3) -> np.ndarray:
    rng = RNG(seed)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])[: len(sizes)]
    return np.concatenate(
        [c + spread * rng.normal(size=(s, 2)) for c, s in zip(centers, sizes, strict=True)]
    )


def test_coverage_chooses_the_never_labeled_cluster_first() -> None:
    embeddings = _blobs([40, 40, 40])
    labels = _unlabeled(120)
    labels[:10], labels[40:50] = 0, 1  # clusters 0 and 1 labeled, the third never
    pool = Pool(labels=labels, embeddings=embeddings)
    picks = REGISTRY["coverage"](pool, 3, rng=RNG(0), n_clusters=3).indices
    assert (picks[0] >= 80) and (picks >= 80).sum() >= 2


def test_under_covered_cluster_list_names_the_unlabeled_cluster() -> None:
    clusters = np.repeat(np.arange(3), 40).astype(np.int64)
    labeled = np.zeros(120, dtype=bool)
    labeled[:10] = labeled[40:50] = True
    table = cluster_coverage(clusters, labeled)
    assert [row.cluster for row in table] == [2, 0, 1]
    assert table[0].size == 40 and table[0].labeled == 0 and table[0].share == 0.0
    assert table[0].under_coverage == pytest.approx((40 / 1) / (120 / (20 + 3)))
    assert [row.cluster for row in under_covered_clusters(clusters, labeled)] == [2]


def test_coreset_takes_the_far_point_first() -> None:
    embeddings = _blobs([30, 30])
    embeddings[7] = [50.0, 50.0]
    labels = _unlabeled(60)
    labels[10] = labels[40] = 0
    picks = REGISTRY["coreset"](Pool(labels=labels, embeddings=embeddings), 2, rng=RNG(0))
    assert picks.indices[0] == 7
    assert picks.scores[0] == pytest.approx(np.linalg.norm(embeddings[7] - embeddings[40]))


def test_outliers_score_highest_by_both_methods() -> None:
    embeddings = _blobs([50, 50])
    embeddings[3] = [4.0, 5.0]
    clustering = cluster_embeddings(embeddings, n_clusters=2, rng=RNG(0))
    for method in ("centroid", "knn"):
        scores = outlier_scores(embeddings, clustering=clustering, method=method)
        assert int(np.argmax(scores)) == 3, method


def test_typicality_avoids_outliers_and_prefers_the_dense_core() -> None:
    embeddings = _blobs([60], spread=1.0)
    embeddings[:5] += 20.0  # a small far group
    pool = Pool(labels=_unlabeled(60), embeddings=embeddings)
    picks = _first("typicality", pool, 10)
    assert min(picks) >= 5


def test_cold_start_spreads_first_picks_over_clusters_largest_first() -> None:
    embeddings = _blobs([60, 30, 20, 10])
    pool = Pool(labels=_unlabeled(120), embeddings=embeddings)
    picks = REGISTRY["cold_start"](pool, 4, rng=RNG(0)).indices
    blob = np.searchsorted([60, 90, 110], picks, side="right")
    assert blob.tolist() == [0, 1, 2, 3]
    centre = embeddings[:60].mean(axis=0)
    assert np.linalg.norm(embeddings[picks[0]] - centre) < 0.3  # typical, not the edge


def test_cold_start_skips_clusters_already_labeled() -> None:
    embeddings = _blobs([40, 40, 40])
    labels = _unlabeled(120)
    labels[:3] = 0
    pool = Pool(labels=labels, embeddings=embeddings)
    picks = REGISTRY["cold_start"](pool, 2, rng=RNG(0), n_clusters=3).indices
    assert (picks >= 40).all()


def test_balance_lifts_the_class_missing_from_the_labels() -> None:
    probs = np.tile([0.8, 0.1, 0.1], (30, 1))
    probs[11] = [0.1, 0.1, 0.8]
    labels = _unlabeled(30)
    labels[:8] = [0, 0, 0, 0, 0, 1, 1, 0]
    assert _first("balance", Pool(labels=labels, probs=probs)) == [11]


def _mislabeled_pool(n: int = 200, planted: tuple[int, ...] = (5, 50, 123)) -> Pool:
    probs = _confident(n, seed=1)
    labels = probs.argmax(axis=1).astype(np.int64)
    for i in planted:
        labels[i] = (labels[i] + 1) % 3
    labels[150:] = -1
    return Pool(labels=labels, probs=probs, oos_probs=probs)


@pytest.mark.parametrize("name", ["self_confidence", "normalized_margin", "confident_learning"])
def test_planted_mislabeled_items_rank_top(name: str) -> None:
    assert sorted(_first(name, _mislabeled_pool(), 3)) == [5, 50, 123]


def test_annotator_disagreement_with_and_without_the_model() -> None:
    probs = _confident(40, seed=2)
    consensus = probs.argmax(axis=1)
    labels = consensus.astype(np.int64)
    annotations = np.stack([consensus, consensus, np.full(40, -1)], axis=1).astype(np.int64)
    annotations[9, 1] = (consensus[9] + 1) % 3  # two annotators split
    labels[30] = annotations[30, 0] = annotations[30, 1] = (consensus[30] + 2) % 3  # model objects
    pool = Pool(labels=labels, oos_probs=probs, annotations=annotations)
    assert _first("annotator_disagreement", pool) == [9]
    assert REGISTRY["annotator_disagreement"].score(pool, rng=RNG(0))[30] == 0.0
    assert set(_first("annotator_model_disagreement", pool, 2)) == {9, 30}


def _wrong_tags_pool(planted: dict[int, int]) -> tuple[Pool, np.ndarray]:
    """200 items with 4 tags each, confidently predicted; ``planted`` item -> the tag flipped."""
    rng = np.random.default_rng(3)
    truth = (rng.random((200, 4)) < 0.4).astype(np.int64)
    probs = np.clip(np.where(truth > 0, 0.93, 0.07) + rng.normal(0, 0.02, truth.shape), 0, 1)
    targets = truth.copy()
    for item, tag in planted.items():
        targets[item, tag] = 1 - targets[item, tag]
    labels = np.zeros(200, dtype=np.int64)
    labels[150:] = -1
    pool = Pool(labels=labels, probs=probs, oos_probs=probs, targets=targets, multilabel=True)
    return pool, targets


@pytest.mark.parametrize("name", ["self_confidence", "confident_learning"])
def test_planted_wrong_tags_rank_top_and_name_the_tag(name: str) -> None:
    from strategies.disagreement import doubted_labels

    planted = {5: 2, 50: 0, 123: 3}
    pool, targets = _wrong_tags_pool(planted)
    assert sorted(_first(name, pool, 3)) == sorted(planted)
    assert pool.oos_probs is not None
    doubted = doubted_labels(targets, pool.oos_probs)
    assert {item: int(doubted[item]) for item in planted} == planted
    scores = REGISTRY[name].score(pool, rng=RNG(0))
    alarm = REGISTRY[name].alarm or 0.0
    flagged = set(np.flatnonzero(scores > alarm))
    assert flagged and flagged <= set(planted)  # nothing else is flagged
    if name == "self_confidence":  # the model disagrees with each planted tag
        assert flagged == set(planted)


def test_a_tag_nobody_was_given_is_not_held_against_anyone() -> None:
    planted = {5: 2}
    pool, targets = _wrong_tags_pool(planted)
    assert pool.oos_probs is not None
    probs = np.array(pool.oos_probs)
    targets[:, 3] = 0  # tag 3 was never given, and the model (knowing nothing) says 70 %
    probs[:, 3] = 0.7
    unjudged = Pool(
        labels=pool.labels, probs=probs, oos_probs=probs, targets=targets, multilabel=True
    )
    scores = REGISTRY["self_confidence"].score(unjudged, rng=RNG(0))
    assert set(np.flatnonzero(scores > 0.5)) == {5}


def test_slice_lifts_unlabeled_items_of_the_slice_the_model_fails_on() -> None:
    rng = np.random.default_rng(0)
    n = 300
    slices = np.arange(n) % 3  # three sources
    labels = np.where(np.arange(n) < 150, rng.integers(0, 2, n), -1)
    probs = np.where(np.arange(2) == labels[:, None], 0.9, 0.1)
    noisy = (slices == 1) & (labels >= 0) & (rng.random(n) < 0.5)
    probs[noisy] = probs[noisy][:, ::-1]  # source 1's labels disagree with the model half the time
    probs[labels < 0] = 0.5
    pool = Pool(labels=labels, probs=probs, oos_probs=probs, slices=slices)
    selection = REGISTRY["slice"](pool, 50, rng=np.random.default_rng(1))
    assert (slices[selection.indices] == 1).all() and (labels[selection.indices] < 0).all()
    rates, overall = slice_error_rates(labels, probs, slices)
    assert rates.argmax() == 1 and rates[0] < overall < rates[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_pools_seeded_on_a_sample_still_find_every_cluster(seed: int) -> None:
    """Above SEED_SAMPLE items k-means is seeded once on a sample of them: twelve separated
    blobs, one of them small, still come out as twelve clusters."""
    n = SEED_SAMPLE + 2_000
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 16)) * 6
    sizes = np.full(12, (n - 300) // 11)
    sizes[-1] = n - sizes[:-1].sum()  # the last blob holds about 300 items
    truth = np.repeat(np.arange(12), sizes)
    x = (centres[truth] + rng.normal(size=(n, 16))).astype(np.float32)
    clustering = cluster_embeddings(x, n_clusters=12, rng=np.random.default_rng(seed))
    # Each blob is (almost) one cluster, and each cluster (almost) one blob.
    for labels, other in ((truth, clustering.labels), (clustering.labels, truth)):
        for c in np.unique(labels):
            assert np.bincount(other[labels == c]).max() >= 0.95 * (labels == c).sum()
    assert clustering.centers.shape == (12, 16)
