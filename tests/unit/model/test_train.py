"""Heads over embeddings: accuracy, cross-fitting, calibration, committees, multi-label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from backend.model.calibration import (
    expected_calibration_error,
    fit_temperature,
    probabilities,
)
from backend.model.train import assign_folds, blas_threads, train_model

from .conftest import blobs, fast_settings

CLASSES = ["a", "b", "c", "d"]


def test_separable_embeddings_reach_high_accuracy_with_few_labels() -> None:
    x, y, _ = blobs(400, seed=2)
    train = np.concatenate([np.flatnonzero(y == c)[:5] for c in range(4)])  # 20 labels
    model = train_model(
        x[train], y[train], classes=CLASSES, multilabel=False, settings=fast_settings()
    )
    test = np.setdiff1d(np.arange(len(y)), train)
    accuracy = (model.predict_proba(x[test]).argmax(axis=1) == y[test]).mean()
    assert accuracy >= 0.95
    assert model.metrics["accuracy"] >= 0.9  # cross-validated, on 20 labels
    assert model.metrics["n_labels"] == 20


def test_no_oos_probability_comes_from_a_head_that_saw_the_item() -> None:
    x, y, _ = blobs(90, seed=3)
    model = train_model(x, y, classes=CLASSES, multilabel=False, settings=fast_settings())
    n_folds = model.fold_seen.shape[1]
    assert n_folds == 3 and set(np.unique(model.folds)) == {0, 1, 2}
    # the head that scored item i (its fold's head) never trained or early-stopped on it ...
    assert not model.fold_seen[np.arange(len(y)), model.folds].any()
    # ... while every other fold head did use it (so the record is not trivially all False).
    others = np.ones_like(model.fold_seen)
    others[np.arange(len(y)), model.folds] = False
    assert model.fold_seen[others].all()


@pytest.mark.parametrize("n_items", [60, 150], ids=["fixed-epochs", "early-stopping"])
def test_changing_a_label_leaves_its_own_folds_oos_probabilities_unchanged(n_items: int) -> None:
    x, y, _ = blobs(n_items, spread=1.0, seed=4)
    folds = assign_folds(y, 3, np.random.default_rng(0))
    settings = fast_settings(calibrate=False, early_stopping_min_labels=100, patience=3)
    before = train_model(x, y, classes=CLASSES, multilabel=False, settings=settings, folds=folds)
    flipped = y.copy()
    flipped[0] = (y[0] + 1) % 4
    after = train_model(
        x, flipped, classes=CLASSES, multilabel=False, settings=settings, folds=folds
    )
    same_fold = folds == folds[0]
    np.testing.assert_allclose(after.oos_probs[same_fold], before.oos_probs[same_fold], atol=1e-6)
    # the other folds' heads did see item 0, and their predictions moved
    assert np.abs(after.oos_probs[~same_fold] - before.oos_probs[~same_fold]).max() > 1e-4


def test_folds_are_stratified_even_for_classes_smaller_than_k() -> None:
    groups = np.array([0] * 10 + [1] * 10 + [2] * 2)
    folds = assign_folds(groups, 5, np.random.default_rng(0))
    for group in (0, 1):
        assert np.bincount(folds[groups == group], minlength=5).tolist() == [2] * 5
    assert len(set(folds[groups == 2])) == 2
    assert np.bincount(folds, minlength=5).max() - np.bincount(folds, minlength=5).min() <= 1


def test_temperature_scaling_lowers_ece_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=1.5, size=(2000, 5))
    labels = np.array(
        [rng.choice(5, p=p) for p in probabilities(true_logits, 1.0, multilabel=False)]
    )
    overconfident = 4.0 * true_logits
    temperature = fit_temperature(overconfident, labels, multilabel=False)
    assert 3.0 < temperature < 5.5  # recovers roughly the factor planted
    before = expected_calibration_error(
        probabilities(overconfident, 1.0, multilabel=False), labels, multilabel=False
    )
    after = expected_calibration_error(
        probabilities(overconfident, temperature, multilabel=False), labels, multilabel=False
    )
    assert after < before / 3


def test_train_model_stores_calibration_and_metrics() -> None:
    x, y, _ = blobs(160, spread=0.6, seed=5)  # overlapping classes: real errors to calibrate
    model = train_model(x, y, classes=CLASSES, multilabel=False, settings=fast_settings(head="mlp"))
    m = model.metrics
    # T minimises the out-of-sample NLL, so it can only lower it; binned ECE on 160 items is too
    # noisy to order (the planted over-confident test above checks that ECE drops).
    assert m["nll_after"] <= m["nll_before"] + 1e-9
    assert 0.0 <= m["ece_after"] <= 1.0 and 0.0 <= m["ece_before"] <= 1.0
    assert m["temperature"] == model.temperature > 0
    assert np.asarray(m["confusion_matrix"]).sum() == 160
    assert set(m["per_class"]) == set(CLASSES)
    assert {"precision", "recall", "f1", "support"} <= set(m["per_class"]["a"])
    assert 0.25 < m["accuracy"] < 1.0 and m["train_seconds"] > 0
    np.testing.assert_allclose(model.oos_probs.sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("mode", ["bootstrap", "mc_dropout"])
def test_committee_members_differ_and_are_reproducible(mode: str) -> None:
    x, y, _ = blobs(80, spread=0.8, seed=6)
    settings = fast_settings(committee_mode=mode, committee_size=4, dropout=0.3)
    model = train_model(x, y, classes=CLASSES, multilabel=False, settings=settings)
    members = model.committee_proba(x)
    assert members.shape == (4, 80, 4)
    assert members.dtype == np.float32  # the compiled committee kernels' dtype
    np.testing.assert_allclose(members.sum(axis=2), 1.0, atol=1e-6)
    assert np.abs(members[0] - members[1]).max() > 1e-3
    np.testing.assert_array_equal(members, model.committee_proba(x))


@pytest.mark.parametrize("mode", ["bootstrap", "mc_dropout"])
def test_pool_proba_is_predict_and_committee_proba_in_one_pass(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cycle predicts its pool with ``pool_proba``: the same values as the two calls, in
    chunks too (MC dropout draws its masks in the same order)."""
    from backend.model import train

    x, y, _ = blobs(90, spread=0.8, seed=9)
    settings = fast_settings(committee_mode=mode, committee_size=3, dropout=0.3)
    model = train_model(x, y, classes=CLASSES, multilabel=False, settings=settings)
    for rows in (train.INFERENCE_ROWS, 16):  # one chunk, then 6 (the last of 10 rows)
        monkeypatch.setattr(train, "INFERENCE_ROWS", rows)
        probs, members = model.pool_proba(x)
        np.testing.assert_array_equal(probs, model.predict_proba(x))
        np.testing.assert_array_equal(members, model.committee_proba(x))
        assert members.shape == (3, 90, 4)
    empty, no_members = model.pool_proba(x[:0])
    assert empty.shape == (0, 4) and no_members.shape == (3, 0, 4)


def test_same_seed_same_model_and_global_rng_untouched() -> None:
    x, y, _ = blobs(60, seed=7)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = train_model(x, y, classes=CLASSES, multilabel=False, settings=fast_settings())
    assert torch.equal(torch.rand(3), expected_next)
    second = train_model(x, y, classes=CLASSES, multilabel=False, settings=fast_settings())
    np.testing.assert_array_equal(first.oos_probs, second.oos_probs)
    np.testing.assert_array_equal(first.predict_proba(x), second.predict_proba(x))


def test_multilabel_training_and_prediction() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(240, 12)).astype(np.float32)
    targets = np.stack([x[:, 0] > 0, x[:, 1] > 0.5, x[:, 2] + x[:, 3] > 0], axis=1).astype(int)
    labels = ["indoor", "person", "car"]
    model = train_model(
        x[:160],
        targets[:160],
        classes=labels,
        multilabel=True,
        settings=fast_settings(max_epochs=150),
    )
    probs = model.predict_proba(x[160:])
    assert probs.shape == (80, 3)
    assert model.thresholds is not None and model.thresholds.shape == (3,)
    predicted = probs >= model.thresholds
    assert (predicted == targets[160:]).mean() >= 0.9
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent sigmoids, not a softmax
    assert model.committee_proba(x[160:]).shape == (3, 80, 3)
    assert len(model.metrics["confusion_matrix"]) == 3
    assert model.metrics["label_accuracy"] >= 0.85


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (np.array([0]), "at least 2"),
        (np.array([0, 4]), "single-label targets"),
        (np.array([0, 1, 2]), "one target per row"),
    ],
)
def test_bad_inputs_are_rejected(targets: np.ndarray, message: str) -> None:
    x = np.zeros((len(targets) if len(targets) != 3 else 2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        train_model(x, targets, classes=CLASSES, multilabel=False, settings=fast_settings())


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_blas_threads_limits_numpy_and_scipy_inside_the_block_only() -> None:
    np.dot(np.ones((4, 4)), np.ones((4, 4)))  # numpy's BLAS is loaded
    before = _blas_threads()
    assert before  # numpy's OpenBLAS at least
    with blas_threads(1):
        assert _blas_threads() == {1}
    assert _blas_threads() == before
    with blas_threads(0):  # 0 leaves the libraries' own setting
        assert _blas_threads() == before


@pytest.mark.parametrize("mode", ["bootstrap", "mc_dropout"])
def test_a_pool_predicted_in_chunks_gets_what_one_pass_gives(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large pools are predicted :data:`INFERENCE_ROWS` rows at a time; the main head's and the
    bootstrap members' answers do not depend on the chunking (MC dropout's masks are drawn per
    chunk, so its members only keep their shape and their reproducibility)."""
    from backend.model import train

    x, y, _ = blobs(120, spread=0.8, seed=8)
    settings = fast_settings(committee_mode=mode, committee_size=3, dropout=0.3)
    model = train_model(x, y, classes=CLASSES, multilabel=False, settings=settings)
    whole, members = model.predict_proba(x), model.committee_proba(x)
    monkeypatch.setattr(train, "INFERENCE_ROWS", 7)  # 18 chunks, the last of 1 row
    np.testing.assert_allclose(model.predict_proba(x), whole, atol=1e-6)
    chunked = model.committee_proba(x)
    assert chunked.shape == members.shape == (3, 120, 4)
    if mode == "bootstrap":
        np.testing.assert_allclose(chunked, members, atol=1e-6)
    np.testing.assert_array_equal(chunked, model.committee_proba(x))
    assert model.predict_proba(x[:0]).shape == (0, 4)


@pytest.mark.parametrize("offset", [0.0, 5_000.0])
def test_folded_standardization_predicts_what_standardized_inputs_give(
    offset: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bootstrap heads take raw embeddings with the standardization folded into their first
    layer; their logits match the heads on standardized inputs. Embeddings whose mean is far from
    zero next to their spread (float32 would lose it in the folded bias) stay unfolded."""
    from backend.model import train

    x, y, _ = blobs(100, spread=0.8, seed=11)
    x = x + offset
    settings = fast_settings(committee_mode="bootstrap", committee_size=3)
    model = train_model(x, y, classes=CLASSES, multilabel=False, settings=settings)
    assert model._folds_standardization() is (offset == 0.0)
    probs, members = model.pool_proba(x)
    logits = model.logits(x)
    monkeypatch.setattr(train, "FOLD_MAX_OFFSET", -1.0)  # never fold: the standardized path
    assert not model._folds_standardization()
    np.testing.assert_allclose(model.logits(x), logits, atol=1e-4)
    reference, reference_members = model.pool_proba(x)
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    np.testing.assert_allclose(members, reference_members, atol=1e-5)
