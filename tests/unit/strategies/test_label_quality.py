"""Planted answers for the calibrated suspicion and the decision to flag it (label_quality)."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.label_quality import (
    Gate,
    consistent_error,
    flag_decision,
    knn_label_probs,
    label_quality,
    mixture_posterior,
    noise_posterior,
)


def _blobs(n_per: int, n_classes: int, rng: np.random.Generator, spread: float = 0.35):
    centres = rng.normal(size=(n_classes, 8)) * 3
    y = np.repeat(np.arange(n_classes), n_per)
    x = centres[y] + spread * rng.normal(size=(len(y), 8))
    return x, y


def _softmax_probs(
    x: np.ndarray, y: np.ndarray, n_classes: int, temperature: float = 4.0
) -> np.ndarray:
    """Nearest-centroid probabilities (a stand-in for a model's out-of-sample probabilities)."""
    centres = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
    logits = -((x[:, None, :] - centres[None]) ** 2).sum(axis=2) / temperature
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_knn_votes_leave_the_item_out_and_skip_unlabeled() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    labels = np.array([0, 0, 1, 1, -1])
    probs = knn_label_probs(x, labels, 2, k=1)
    # Each labeled item's one neighbour is the other item of its class, never itself.
    np.testing.assert_allclose(probs[:4].argmax(axis=1), [0, 0, 1, 1])
    np.testing.assert_allclose(probs[0], [(1 + 0.5) / 2, 0.5 / 2])
    np.testing.assert_allclose(probs[4], [0.5, 0.5])  # unlabeled: uniform, never voted


def test_noise_posterior_recovers_a_planted_swap() -> None:
    # Everyone says class 0 confidently; one item given 1 where the annotators' model says 0.
    pooled = np.array([[0.97, 0.03]] * 50 + [[0.03, 0.97]] * 50 + [[0.97, 0.03]])
    given = np.array([0] * 50 + [1] * 50 + [1])
    posterior, transition = noise_posterior(pooled, given)
    assert posterior[-1].argmax() == 0 and posterior[-1, 1] < 0.3
    assert posterior[:100].max(axis=1).min() > 0.9  # the agreeing items stay believed
    assert transition[0, 0] > 0.9 and transition[1, 1] > 0.9


def test_mixture_posterior_keeps_a_doubted_label_its_share_of_the_evidence() -> None:
    # 180 labels the evidence agrees with; ten correct labels of class 1 on items the evidence
    # gives class 1 only 5 % (hard items the queue chose for their doubt); five planted errors
    # where it gives 0.1 %.
    pooled = np.array(
        [[0.95, 0.05]] * 90 + [[0.05, 0.95]] * 90 + [[0.95, 0.05]] * 10 + [[0.999, 0.001]] * 5
    )
    given = np.array([0] * 90 + [1] * 90 + [1] * 10 + [1] * 5)
    posterior, transition, loglik = mixture_posterior(pooled, given)
    deconvolved, deconvolved_t = noise_posterior(pooled, given)
    doubted, planted = 1.0 - posterior[180, 1], 1.0 - posterior[-1, 1]
    assert planted > 0.95 and doubted < 0.8 and doubted < planted  # graded, order kept
    assert 1.0 - deconvolved[180, 1] > 0.999  # deconvolving reads the doubt as certain error
    assert (1.0 - posterior[:180][np.arange(180), given[:180]]).max() < 0.01
    count = (1.0 - np.diag(transition))[given].sum()
    assert count < (1.0 - np.diag(deconvolved_t))[given].sum()  # fewer wrong labels expected
    assert np.isfinite(loglik) and loglik < 0


def test_consistent_error_holds_the_count_to_the_noise_model_and_keeps_the_order() -> None:
    # Ten labels of class 0, each posterior sure it is really class 1 (saturated), one mild one.
    posterior = np.array([[1e-9, 1.0 - 1e-9]] * 9 + [[0.4, 0.6]])
    given = np.zeros(10, dtype=np.int64)
    transition = np.array([[0.8, 0.2], [0.1, 0.9]])  # 20 % of class 0's labels wrong: 2 of 10
    p = consistent_error(posterior, given, transition)
    assert p.sum() == pytest.approx(2.0, rel=1e-6)
    assert (p[:9] > p[9]).all() and (np.diff(p[:9]) == 0).all()  # order and ties kept
    # A posterior counting no more than the noise model is kept as it is.
    calm = np.array([[0.9, 0.1]] * 9 + [[0.4, 0.6]])
    np.testing.assert_allclose(consistent_error(calm, given, transition), 1.0 - calm[:, 0])


def test_consistent_error_never_accuses_fewer_than_the_noise_model_counts() -> None:
    # Three clear suspects beside fifty mildly doubted labels of one class; the noise model
    # expects 3.5 wrong. Spreading that count over all 53 would push the three under 0.5 too.
    log_odds = np.array([2.0] * 3 + [1.0] * 50 + [-6.0] * 47)
    p_wrong = 1.0 / (1.0 + np.exp(-log_odds))
    posterior = np.stack([1.0 - p_wrong, p_wrong], axis=1)
    given = np.zeros(100, dtype=np.int64)
    transition = np.array([[0.965, 0.035], [0.05, 0.95]])  # 3.5 of the 100 labels wrong
    p = consistent_error(posterior, given, transition)
    assert (p[:3] > 0.5).all() and (p[3:] <= 0.5).all()
    assert (p <= p_wrong + 1e-12).all()  # only ever lowered


def test_hard_correct_labels_chosen_by_the_queue_are_not_accused() -> None:
    """Labels the queue chose for their low margin are correct but the model disagrees with
    many of them; beside them, random labels with planted errors. The planted ones are flagged,
    the correct hard ones at most a handful (6 draws: before the count was held to the noise
    model's, 31 correct hard labels were flagged, 18 in one draw)."""
    n_classes, hits, planted_total, accused, draws = 5, 0, 0, 0, 6
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        x, y = _blobs(300, n_classes, rng, spread=1.5)
        truth_probs = _softmax_probs(x, y, n_classes)
        top2 = np.sort(truth_probs, axis=1)[:, -2:]
        hard = np.argsort(top2[:, 1] - top2[:, 0])[:150]  # the queue's lowest margins
        rest = np.setdiff1d(np.arange(len(y)), hard)
        labeled = np.concatenate([hard, rng.choice(rest, 50, replace=False)])
        planted = rng.choice(labeled, 20, replace=False)
        labels = np.full(len(y), -1, dtype=np.int64)
        labels[labeled] = y[labeled]
        labels[planted] = (y[planted] + rng.integers(1, n_classes, 20)) % n_classes
        probs = np.full((len(y), n_classes), 1.0 / n_classes)
        rows = labels >= 0
        probs[rows] = _softmax_probs(x[rows], labels[rows], n_classes)
        quality = label_quality(labels, probs, embeddings=x)
        flagged = set(np.flatnonzero(quality.flagged).tolist())
        hits += len(flagged & set(planted.tolist()))
        planted_total += len(planted)
        accused += len(flagged & (set(hard.tolist()) - set(planted.tolist())))
        assert quality.expected_false_share <= 0.2
    assert hits >= 0.8 * planted_total  # 101 of 120
    assert accused <= 2.5 * draws  # 15 correct hard labels in 6 draws (31 before)


def test_flag_decision_keeps_expected_false_share_under_the_setting() -> None:
    p = np.array([0.99, 0.95, 0.9, 0.7, 0.6, 0.55, 0.4, 0.1])
    flags, share = flag_decision(p, np.ones(8, bool), max_false_share=0.2)
    # Prefix means of 1 - p: .01 .03 .053 .115 .172 .218 -> the first five
    assert flags.tolist() == [True] * 5 + [False] * 3
    assert share == pytest.approx(np.mean(1 - p[:5]))
    flags, _ = flag_decision(p, np.ones(8, bool), max_false_share=1.0)
    assert flags.sum() == 6  # never an item more likely right than wrong


def test_planted_errors_fill_the_flags_and_beat_chance() -> None:
    rng = np.random.default_rng(0)
    x, y = _blobs(40, 5, rng)
    noisy = y.copy()
    planted = rng.choice(len(y), 20, replace=False)
    noisy[planted] = (y[planted] + 1 + rng.integers(0, 4, 20)) % 5
    probs = _softmax_probs(x, noisy, 5)  # centroids of the noisy labels
    quality = label_quality(noisy, probs, embeddings=x)
    flagged = set(np.flatnonzero(quality.flagged))
    assert len(flagged & set(planted)) >= 18
    assert len(flagged - set(planted)) <= 3
    assert quality.expected_false_share <= 0.2
    wrong = quality.suggested[planted] == y[planted]
    assert wrong.mean() >= 0.9  # the suggestion is the true class


def test_correct_labels_of_a_weak_model_are_not_accused() -> None:
    rng = np.random.default_rng(1)
    x, y = _blobs(3, 10, rng, spread=2.5)  # 30 labels, 3 per class, overlapping classes
    # calibrated: a weak model is not sure of anything
    probs = _softmax_probs(x + rng.normal(size=x.shape), y, 10, temperature=60.0)
    quality = label_quality(y, probs, embeddings=x)
    assert quality.flagged.sum() <= 1
    assert set(quality.class_reasons) == set(range(10))
    assert quality.class_reasons[0] == "3 labels (needs 10)"


def test_overwhelming_evidence_passes_the_gate() -> None:
    rng = np.random.default_rng(2)
    x, y = _blobs(6, 3, rng, spread=0.05)
    noisy = y.copy()
    noisy[0] = 1  # far inside class 0, labeled 1
    probs = np.full((len(y), 3), 1e-4)
    probs[np.arange(len(y)), y] = 1.0
    probs /= probs.sum(axis=1, keepdims=True)
    quality = label_quality(noisy, probs, embeddings=x, gate=Gate(overwhelming=0.99))
    assert 0 in quality.class_reasons  # 6 labels: not judged in general ...
    assert np.flatnonzero(quality.flagged).tolist() == [0]  # ... but this one is overwhelming


def test_strata_fit_their_own_calibration() -> None:
    rng = np.random.default_rng(3)
    x, y = _blobs(40, 3, rng)
    probs = _softmax_probs(x, y, 3)
    strata = np.arange(len(y)) % 2
    a = label_quality(y, probs, embeddings=x, strata=strata)
    b = label_quality(y, probs, embeddings=x)
    assert a.p_error.shape == b.p_error.shape and not a.flagged.any()


def test_multilabel_flags_the_wrong_tag_and_names_it() -> None:
    from strategies.label_quality import multilabel_quality

    rng = np.random.default_rng(4)
    x, y = _blobs(40, 3, rng)
    targets = np.eye(3, dtype=np.int64)[y]
    planted = rng.choice(len(y), 8, replace=False)
    wrong = (y[planted] + 1) % 3
    targets[planted, wrong] = 1  # an extra wrong tag on each
    probs = _softmax_probs(x, y, 3)  # the model believes one tag per item
    quality = multilabel_quality(np.ones(len(y), bool), targets, probs, embeddings=x)
    flagged = set(np.flatnonzero(quality.flagged))
    assert len(flagged & set(planted)) >= 7 and len(flagged - set(planted)) <= 2
    hit = [i for i, p in enumerate(planted) if p in flagged]
    assert (quality.suggested[planted[hit]] == wrong[hit]).all()  # the doubted tag is the wrong one
    assert quality.expected_false_share <= 0.2
