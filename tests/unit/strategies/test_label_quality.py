"""Planted answers for the calibrated suspicion and the decision to flag it (label_quality)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from strategies.label_quality import (
    Gate,
    flag_decision,
    knn_label_probs,
    label_quality,
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


def test_out_of_bag_votes_average_only_the_members_that_did_not_see_the_item() -> None:
    from strategies.label_quality import out_of_bag_votes

    members = np.array(
        [
            [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]],
            [[0.5, 0.5], [0.4, 0.6], [0.0, 1.0]],
            [[0.1, 0.9], [0.6, 0.4], [1.0, 0.0]],
        ]
    )  # (M=3, n=3, C=2)
    seen = np.array([[True, False, False], [False, False, False], [True, True, True]])
    votes = out_of_bag_votes(members, seen)
    np.testing.assert_allclose(votes[0], [0.3, 0.7])  # members 1 and 2
    np.testing.assert_allclose(votes[1], [0.4, 0.6])  # all three
    np.testing.assert_allclose(votes[2], [0.5, 0.5])  # every member saw it: no evidence


def _noisy_view(y: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Probabilities of one imperfect model: the true class favoured, each row jittered."""
    logits = 2.0 * np.eye(n_classes)[y] + rng.normal(size=(len(y), n_classes))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_a_committee_that_contradicts_unanimously_outranks_a_split_one() -> None:
    """Two labels with the same model evidence, doubtful but not enough to accuse: the one every
    out-of-bag member contradicts is flagged and ranks first; the one they split on is not."""
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3), 60)
    probs, committee = _noisy_view(y, 3, rng), _noisy_view(y, 3, rng)
    unanimous, split = 0, 1  # both given class 0
    probs[unanimous] = probs[split] = [0.30, 0.65, 0.05]  # the model leans to class 1
    committee[unanimous] = [0.02, 0.96, 0.02]
    committee[split] = [0.49, 0.49, 0.02]
    without = label_quality(y, probs)
    assert without.p_error[unanimous] == pytest.approx(without.p_error[split])
    assert not without.flagged[[unanimous, split]].any()
    quality = label_quality(y, probs, extra=[committee])
    assert quality.weights[1] > 0  # the committee's evidence carries weight
    assert quality.p_error[unanimous] > quality.p_error[split]
    assert quality.flagged[unanimous] and not quality.flagged[split]
    assert quality.suggested[unanimous] == 1
    assert np.argmax(quality.p_error) == unanimous or quality.p_error[unanimous] == 1.0


def _digits_by_how_chosen(seed: int) -> tuple[np.ndarray, ...]:
    """Digits labeled as a project following a margin queue would be (200 of the lowest-margin
    items for a model of 60 labels) beside 60 labeled in random order; 8 % wrong answers.
    Evidence as the cycle has it: 5-fold out-of-sample and out-of-bag committee probabilities
    of a logistic regression on the given labels, the pixels as embeddings."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from strategies.label_quality import out_of_bag_votes

    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    first, rest = order[:60], order[60:]
    p = np.sort(LogisticRegression(max_iter=500).fit(x[first], y[first]).predict_proba(x[rest]))
    hard = rest[np.argsort(p[:, -1] - p[:, -2])[:200]]
    random_order = rng.choice(np.setdiff1d(rest, hard), 60, replace=False)
    rows = np.concatenate([random_order, hard])
    strata = np.repeat([0, 1], [60, 200])
    given, wrong = y[rows].copy(), rng.random(len(rows)) < 0.08
    given[wrong] = (given[wrong] + rng.integers(1, 10, wrong.sum())) % 10
    model = LogisticRegression(max_iter=500)
    oos = cross_val_predict(model, x[rows], given, cv=5, method="predict_proba")
    members, seen = [], np.zeros((len(rows), 5), dtype=bool)
    for m in range(5):
        drawn = rng.integers(0, len(rows), len(rows))
        seen[drawn, m] = True
        fitted = LogisticRegression(max_iter=500).fit(x[rows][drawn], given[drawn])
        member = np.zeros((len(rows), 10))
        member[:, fitted.classes_] = fitted.predict_proba(x[rows])
        members.append(member)
    committee = out_of_bag_votes(np.stack(members), seen)
    return given, oos, x[rows], committee, strata, wrong


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_labels_a_strategy_chose_are_not_falsely_flagged_beyond_the_setting() -> None:
    """Strategy-chosen (hard) items: calibrated apart from those labeled in random order, under
    the annotators' noise measured there, the flags of each stratum hold no more false ones
    than the setting's share, and correct chosen labels are flagged no more often than correct
    random-order ones. One calibration for both lets the hard items' model errors pass for
    label noise: far more of their correct labels get flagged."""
    gate = Gate()
    # per variant, per stratum (0 random order, 1 chosen): [false flags, flags, correct labels]
    tally = {"apart": np.zeros((2, 3)), "together": np.zeros((2, 3))}
    found = planted = 0
    for seed in range(4):
        with threadpool_limits(1):  # small fits: BLAS threads only contend
            given, oos, x, committee, strata, wrong = _digits_by_how_chosen(seed)
        for name, by in (("apart", strata), ("together", None)):
            quality = label_quality(
                given, oos, embeddings=x, extra=[committee], strata=by, gate=gate
            )
            for s in (0, 1):
                flagged = quality.flagged & (strata == s)
                tally[name][s] += [
                    (flagged & ~wrong).sum(),
                    flagged.sum(),
                    (~wrong)[strata == s].sum(),
                ]
            if by is not None:
                found, planted = found + (quality.flagged & wrong).sum(), planted + wrong.sum()
    apart, together = tally["apart"], tally["together"]
    assert (apart[:, 1] >= 5).all()
    assert (apart[:, 0] / apart[:, 1] <= gate.max_false_share).all()
    assert apart[1, 0] / apart[1, 2] <= apart[0, 0] / apart[0, 2]
    assert together[1, 0] >= 2 * apart[1, 0] + 5
    assert found >= 0.5 * planted  # still finds most planted errors
