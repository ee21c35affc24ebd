"""Where we compute what modAL or cleanlab compute, we agree with them on random inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cleanlab.filter import find_label_issues
from cleanlab.multilabel_classification.filter import find_label_issues as find_multilabel_issues
from cleanlab.rank import get_label_quality_scores
from modAL.disagreement import KL_max_disagreement, vote_entropy
from modAL.models import ActiveLearner, Committee
from modAL.uncertainty import (
    classifier_entropy,
    classifier_margin,
    classifier_uncertainty,
    entropy_sampling,
    margin_sampling,
    uncertainty_sampling,
)
from scipy.stats import entropy as scipy_entropy
from sklearn.base import BaseEstimator, ClassifierMixin

import strategies.base
from strategies import REGISTRY, Pool
from strategies.disagreement import (
    confident_learning_mask,
    kl_consensus_scores,
    multilabel_confident_learning_mask,
    normalized_margin_scores,
    self_confidence_scores,
    vote_entropy_scores,
)
from strategies.uncertainty import (
    bald_scores,
    entropy_scores,
    least_confidence_scores,
    margin_scores,
)

SEEDS = range(5)


class FixedProba(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier whose predictions are given arrays; X holds item indices."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def fit(self, X: Any, y: Any) -> FixedProba:
        self.classes_ = np.arange(self.probs.shape[1])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.probs[X[:, 0].astype(int)]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def _random_probs(seed: int, n: int = 300, n_classes: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(n_classes, 0.7), size=n)


def _fitted(probs: np.ndarray) -> FixedProba:
    return FixedProba(probs).fit(None, None)


def _index(n: int) -> np.ndarray:
    return np.arange(n, dtype=float)[:, None]


@pytest.mark.parametrize("seed", SEEDS)
def test_uncertainty_scores_equal_modal(seed: int) -> None:
    probs = _random_probs(seed)
    clf, X = _fitted(probs), _index(len(probs))
    np.testing.assert_allclose(least_confidence_scores(probs), classifier_uncertainty(clf, X))
    np.testing.assert_allclose(margin_scores(probs), 1.0 - classifier_margin(clf, X))
    np.testing.assert_allclose(entropy_scores(probs), classifier_entropy(clf, X), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("name", "modal_query"),
    [
        ("least_confidence", uncertainty_sampling),
        ("margin", margin_sampling),
        ("entropy", entropy_sampling),
    ],
)
def test_uncertainty_selection_equals_modal(seed: int, name: str, modal_query: Any) -> None:
    probs = _random_probs(seed)
    theirs = modal_query(_fitted(probs), _index(len(probs)), n_instances=25)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    ours = REGISTRY[name](
        Pool(labels=np.full(300, -1), probs=probs), 25, rng=np.random.default_rng(0)
    )
    assert set(ours.indices.tolist()) == set(np.asarray(theirs).tolist())


@pytest.mark.parametrize("seed", SEEDS)
def test_committee_scores_equal_modal(seed: int) -> None:
    members = np.stack([_random_probs(seed * 10 + m, n=200, n_classes=4) for m in range(4)])
    committee = Committee([ActiveLearner(estimator=_fitted(p)) for p in members])
    X = _index(200)
    np.testing.assert_allclose(vote_entropy_scores(members), vote_entropy(committee, X), atol=1e-12)
    np.testing.assert_allclose(
        kl_consensus_scores(members), KL_max_disagreement(committee, X), atol=1e-10
    )


def _correlated_committee(seed: int, n: int, n_classes: int, n_members: int = 5) -> np.ndarray:
    """Members that share a base prediction, so hard votes often (not always) agree."""
    rng = np.random.default_rng(seed)
    base = rng.dirichlet(np.full(n_classes, 0.3), size=n)
    members = base[None] * rng.lognormal(sigma=1.0, size=(n_members, n, n_classes))
    members[:, ::7] = 0.0  # exact zeros in some rows: 0 log 0 must be 0
    members[:, ::7, 0] = 1.0
    return members / members.sum(axis=2, keepdims=True)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_committee_scores_equal_modal_across_chunks(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(strategies.base, "COMMITTEE_CHUNK_ELEMENTS", 25_000)  # 100-item chunks
    members = _correlated_committee(seed, n=700, n_classes=50)
    committee = Committee([ActiveLearner(estimator=_fitted(p)) for p in members])
    X = _index(700)
    np.testing.assert_allclose(vote_entropy_scores(members), vote_entropy(committee, X), atol=1e-12)
    np.testing.assert_allclose(
        kl_consensus_scores(members), KL_max_disagreement(committee, X), atol=1e-10
    )


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_bald_equals_mutual_information_reference(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(strategies.base, "COMMITTEE_CHUNK_ELEMENTS", 25_000)  # 100-item chunks
    members = _correlated_committee(seed, n=700, n_classes=50)
    mean_entropy = scipy_entropy(members.mean(axis=0), axis=1)
    member_entropy = scipy_entropy(members, axis=2).mean(axis=0)
    np.testing.assert_allclose(
        bald_scores(members), np.maximum(mean_entropy - member_entropy, 0.0), atol=1e-12
    )


@pytest.mark.parametrize("score", [bald_scores, vote_entropy_scores, kl_consensus_scores])
def test_float32_committee_scores_match_float64(score: Any) -> None:
    members = _correlated_committee(0, n=700, n_classes=50)
    np.testing.assert_allclose(score(members.astype(np.float32)), score(members), atol=2e-5)


def _strided(array: np.ndarray) -> np.ndarray:
    """The same values, not C-contiguous (members interleaved in memory)."""
    out = np.swapaxes(np.ascontiguousarray(np.swapaxes(array, 0, 1)), 0, 1)
    assert not out.flags.c_contiguous
    return out


@pytest.mark.parametrize("score", [bald_scores, kl_consensus_scores, vote_entropy_scores])
@pytest.mark.parametrize("n_classes", [1, 2, 7, 50, 130])
def test_compiled_float32_committee_kernels_match_numpy(score: Any, n_classes: int) -> None:
    # C-contiguous float32 committees take the compiled pass; strided ones numpy's chunks.
    members = _correlated_committee(5, n=600, n_classes=n_classes).astype(np.float32)
    assert strategies.base.fast_committee(members)
    compiled = score(members)
    np.testing.assert_allclose(compiled, score(_strided(members)), atol=5e-6)
    np.testing.assert_allclose(compiled, score(members.astype(np.float64)), atol=2e-5)
    if n_classes > 1:
        assert np.ptp(compiled) > 0.1  # items the members agree on and items they do not


def test_compiled_float32_kernels_on_hard_votes_agree_with_modal() -> None:
    rng = np.random.default_rng(8)
    members = np.eye(6, dtype=np.float32)[rng.integers(6, size=(5, 400))]  # exact zeros, one-hot
    committee = Committee([ActiveLearner(estimator=_fitted(p)) for p in members.astype(float)])
    np.testing.assert_allclose(
        kl_consensus_scores(members), KL_max_disagreement(committee, _index(400)), atol=1e-5
    )
    np.testing.assert_allclose(bald_scores(members), vote_entropy_scores(members), atol=1e-5)
    assert np.isfinite(bald_scores(members)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vote_entropy_breaks_ties_as_argmax_does(dtype: Any) -> None:
    # Tied top classes vote for the first of them, as numpy's argmax (and modAL's vote) picks.
    rng = np.random.default_rng(9)
    members = rng.integers(1, 4, size=(5, 500, 6)).astype(dtype)  # many exact ties
    members /= members.sum(axis=2, keepdims=True)
    votes = members.argmax(axis=2)
    counts = np.stack([(votes == k).sum(axis=0) for k in range(6)], axis=1) / 5.0
    expected = scipy_entropy(counts, axis=1)
    np.testing.assert_allclose(vote_entropy_scores(members), expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [1, 2, 3, 100])
def test_margin_equals_the_two_largest_values_with_ties(dtype: Any, n_classes: int) -> None:
    rng = np.random.default_rng(11)
    high = 4 if n_classes <= 3 else 120  # many exact ties, and rows without
    probs = rng.integers(0, high, size=(700, n_classes)).astype(dtype) + 1e-3
    probs /= probs.sum(axis=1, keepdims=True)
    if n_classes == 1:
        np.testing.assert_array_equal(margin_scores(probs), 1.0)
        return
    top2 = np.sort(probs.astype(np.float64), axis=1)[:, -2:]
    expected = 1.0 - (top2[:, 1] - top2[:, 0])
    assert (expected == 1.0).any() and (expected < 1.0).any()
    np.testing.assert_array_equal(margin_scores(probs), expected)
    np.testing.assert_array_equal(margin_scores(probs[::-1]), expected[::-1])  # strided rows


def test_log32_is_as_accurate_as_float32_allows() -> None:
    from strategies.kernels import log32_into

    rng = np.random.default_rng(10)
    x = np.concatenate(
        [
            rng.random(100_000, dtype=np.float32),
            (10.0 ** rng.uniform(-37.9, 0.0, 100_000)).astype(np.float32),
            np.float32([1.0, 0.5, 2.0**-126, np.nextafter(np.float32(1), np.float32(0))]),
        ]
    )
    out = np.empty_like(x)
    log32_into(x, out)
    exact = np.log(x.astype(np.float64))
    error = np.abs(out - exact) / np.maximum(np.abs(exact), 1.0)  # relative, absolute below 1
    numpy_error = np.abs(np.log(x) - exact) / np.maximum(np.abs(exact), 1.0)
    assert error.max() < 1.5 * numpy_error.max()
    zero = np.empty(1, np.float32)
    log32_into(np.zeros(1, np.float32), zero)
    assert np.isfinite(zero[0]) and zero[0] < -87.0  # so 0 * log 0 is 0


def _noisy_labels(seed: int, n: int = 400, n_classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(n_classes, size=n)
    logits = rng.normal(size=(n, n_classes)) + 2.5 * np.eye(n_classes)[truth]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = truth.copy()
    flip = rng.random(n) < 0.15
    labels[flip] = rng.integers(n_classes, size=int(flip.sum()))
    return labels.astype(np.int64), probs


@pytest.mark.parametrize("seed", SEEDS)
def test_confident_learning_mask_equals_cleanlab(seed: int) -> None:
    labels, probs = _noisy_labels(seed)
    theirs = find_label_issues(labels, probs, filter_by="confident_learning", n_jobs=1)
    ours = confident_learning_mask(labels, probs)
    assert ours.sum() > 10
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("method", "ours"),
    [("self_confidence", self_confidence_scores), ("normalized_margin", normalized_margin_scores)],
)
def test_label_quality_scores_equal_cleanlab(seed: int, method: str, ours: Any) -> None:
    labels, probs = _noisy_labels(seed)
    theirs = get_label_quality_scores(labels, probs, method=method)
    np.testing.assert_allclose(ours(labels, probs), 1.0 - theirs, atol=1e-12)
    np.testing.assert_array_equal(
        np.argsort(-ours(labels, probs), kind="stable"), np.argsort(theirs, kind="stable")
    )


def test_confident_learning_mask_ignores_unlabeled_items() -> None:
    labels, probs = _noisy_labels(0)
    hidden = labels.copy()
    hidden[::3] = -1
    kept = hidden >= 0
    theirs = find_label_issues(hidden[kept], probs[kept], filter_by="confident_learning", n_jobs=1)
    mask = confident_learning_mask(hidden, probs)
    assert not mask[~kept].any()
    np.testing.assert_array_equal(mask[kept], theirs)


@pytest.mark.parametrize(
    "score",
    [bald_scores, vote_entropy_scores, kl_consensus_scores, entropy_scores, margin_scores],
)
def test_scores_are_the_same_on_any_number_of_threads(
    score: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(strategies.base, "COMMITTEE_CHUNK_ELEMENTS", 25_000)  # 100-item chunks
    monkeypatch.setattr(strategies.base, "CHUNK_ELEMENTS", 3_200)  # 64-item chunks
    members = _correlated_committee(3, n=1_050, n_classes=50)
    committee = score in (bald_scores, vote_entropy_scores, kl_consensus_scores)
    for dtype in (np.float64, np.float32):  # float32 committees: the compiled kernels
        arrays = (members if committee else members[0]).astype(dtype)
        with strategies.base.threads(1):
            one = score(arrays)
        for n_threads in (2, 3, 16):
            with strategies.base.threads(n_threads):
                np.testing.assert_array_equal(score(arrays), one)
    assert strategies.base.available_threads() >= 1


@pytest.mark.parametrize("score", [normalized_margin_scores, confident_learning_mask])
def test_label_quality_is_the_same_on_any_number_of_threads(
    score: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(strategies.base, "CHUNK_ELEMENTS", 320)  # 64-item chunks
    labels, probs = _noisy_labels(4, n=1_000)
    labels[::9] = -1  # unlabeled items are never flagged, in any chunk
    with strategies.base.threads(1):
        one = score(labels, probs)
    assert one.any()
    for n_threads in (2, 5):
        with strategies.base.threads(n_threads):
            np.testing.assert_array_equal(score(labels, probs), one)


def test_a_worker_error_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strategies.base, "CHUNK_ELEMENTS", 640)

    def kernel(block: np.ndarray) -> np.ndarray:
        if block[0, 0] < 0:
            raise RuntimeError("bad chunk")
        return block.sum(axis=1)

    values = np.ones((1_000, 10))
    values[900:] = -1.0  # only the last chunks fail, on whichever thread scores them
    with strategies.base.threads(4), pytest.raises(RuntimeError, match="bad chunk"):
        strategies.base.rowwise(kernel, values)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_threads_rejects_a_non_positive_count(bad: Any) -> None:
    with (
        pytest.raises(ValueError, match="threads must be a positive integer"),
        strategies.base.threads(bad),
    ):
        pass


def test_hard_vote_committees_take_the_floored_pass_and_still_agree() -> None:
    rng = np.random.default_rng(7)
    votes = rng.integers(4, size=(5, 300))
    members = np.eye(4)[votes]  # one-hot members: every row has exact zeros
    committee = Committee([ActiveLearner(estimator=_fitted(p)) for p in members])
    np.testing.assert_allclose(
        kl_consensus_scores(members), KL_max_disagreement(committee, _index(300)), atol=1e-10
    )
    mean_entropy = scipy_entropy(members.mean(axis=0), axis=1)
    np.testing.assert_allclose(bald_scores(members), mean_entropy, atol=1e-12)  # members: H = 0
    np.testing.assert_allclose(bald_scores(members), vote_entropy_scores(members), atol=1e-12)


def _multilabel(seed: int, n: int = 400, n_labels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, n_labels)) < 0.4).astype(np.int64)
    probs = 1.0 / (1.0 + np.exp(-(rng.normal(size=(n, n_labels)) + 3.0 * (2 * truth - 1))))
    given = truth.copy()
    flip = rng.random((n, n_labels)) < 0.05
    given[flip] = 1 - given[flip]
    return given, probs


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_confident_learning_equals_cleanlab(seed: int) -> None:
    given, probs = _multilabel(seed)
    labeled = np.ones(given.shape[0], dtype=bool)
    labeled[::10] = False  # unlabeled items are neither flagged nor counted in the thresholds
    theirs = find_multilabel_issues(
        [list(np.flatnonzero(row)) for row in given[labeled]],
        probs[labeled],
        filter_by="confident_learning",
    )
    ours = multilabel_confident_learning_mask(labeled, given, probs)
    assert theirs.sum() > 0
    np.testing.assert_array_equal(ours[labeled], theirs)
    assert not ours[~labeled].any()


def test_kernels_compile_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # No place numba may write its cache (a read-only install, no user cache directory): the
    # kernel compiles for this process instead of failing at import.
    import numba.core.caching

    from strategies.kernels import compiled

    monkeypatch.setattr(numba.core.caching.FunctionCache._impl_class, "_locator_classes", [])

    def twice(x: float) -> float:
        return 2.0 * x

    with pytest.raises(RuntimeError, match="no locator"):
        numba.njit(cache=True)(twice)
    assert compiled()(twice)(3.0) == 6.0
