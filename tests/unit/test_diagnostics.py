"""Planted answers for the diagnosis' pure functions."""

from __future__ import annotations

import numpy as np

from backend.diagnosis.compute import (
    DiagnosisInputs,
    classification,
    compute_diagnosis,
    distribution,
    domain_drift,
)
from backend.settings import DiagnosisSettings


def test_drift_auc_is_high_for_shifted_new_items_and_near_half_otherwise() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    task_ids = np.arange(1, 201, dtype=np.int64)
    labeled = task_ids <= 100
    same = domain_drift(x, labeled, task_ids, threshold=0.75, rng=rng)
    assert same.n_new == 100 and same.auc is not None and same.auc < 0.75 and not same.warning
    shifted = x.copy()
    shifted[100:] += 1.5
    moved = domain_drift(shifted, labeled, task_ids, threshold=0.75, rng=rng)
    assert moved.auc is not None and moved.auc > 0.95 and moved.warning


def test_drift_needs_labels_and_new_items() -> None:
    x = np.zeros((20, 4))
    ids = np.arange(20, dtype=np.int64)
    none = domain_drift(x, np.zeros(20, bool), ids, threshold=0.75, rng=np.random.default_rng(0))
    assert none.auc is None and none.reason is not None and "at least" in none.reason


def test_confusion_rows_are_given_labels_and_normalized() -> None:
    labels = np.array([0, 0, 1, 1, -1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5]])
    result = classification(labels, probs, ("a", "b"))
    assert result is not None
    assert result.confusion.counts == [[1, 1], [0, 2]]
    assert result.confusion.normalized == [[0.5, 0.5], [0.0, 1.0]]
    assert classification(labels, None, ("a", "b")) is None


def test_distribution_imbalance_and_empty_classes() -> None:
    dist = distribution(np.array([8, 2, 0]), ("a", "b", "c"))
    assert dist.imbalance == 4.0 and dist.empty == ["c"]


def test_cold_start_still_has_map_coverage_and_drift() -> None:
    rng = np.random.default_rng(1)
    n = 300
    inputs = DiagnosisInputs(
        task_ids=np.arange(1, n + 1, dtype=np.int64),
        embeddings=rng.normal(size=(n, 8)),
        labels=np.where(np.arange(n) < 15, np.arange(n) % 2, -1).astype(np.int64),
        classes=("a", "b"),
        class_counts=np.array([8, 7]),
    )
    limits = DiagnosisSettings(map_points=100)
    diag = compute_diagnosis(inputs, limits=limits, rng=rng)
    assert diag.phase == "cold_start" and diag.classification is None
    assert diag.label_errors == []
    assert len(diag.map.task) == 100 and diag.map.n_total == n
    assert diag.coverage.n_clusters >= 2 and diag.drift.auc is not None


def test_reviewed_label_errors_are_counted_not_listed() -> None:
    rng = np.random.default_rng(2)
    n = 120
    labels = (np.arange(n) % 2).astype(np.int64)
    probs = np.where(labels[:, None] == np.arange(2), 0.9, 0.1)
    scores = np.zeros(n)
    scores[[5, 6, 7]] = [0.9, 0.8, 0.7]  # three doubted labels, 5 the most
    inputs = DiagnosisInputs(
        task_ids=np.arange(1, n + 1, dtype=np.int64),
        embeddings=rng.normal(size=(n, 8)),
        labels=labels,
        classes=("a", "b"),
        class_counts=np.bincount(labels),
        oos_probs=probs,
        error_scores=scores,
        error_alarm=0.5,
        reviewed=frozenset({6, 99}),  # task 6 is row 5; task 99 was never doubted
    )
    diag = compute_diagnosis(inputs, limits=DiagnosisSettings(), rng=rng)
    assert [e.task for e in diag.label_errors] == [7, 8]
    assert diag.label_errors_reviewed == 1


def test_multilabel_label_errors_name_the_doubted_tag_and_skip_the_confusion_matrix() -> None:
    rng = np.random.default_rng(4)
    n = 90
    targets = np.zeros((n, 3), dtype=np.int64)
    targets[np.arange(n), np.arange(n) % 3] = 1
    probs = np.where(targets > 0, 0.9, 0.05)
    targets[7] = [0, 1, 0]  # truly tag 1 (row 7 % 3 == 1): fine
    targets[8] = [1, 0, 0]  # truly tag 2, tagged 0: the model doubts it
    scores = np.zeros(n)
    scores[8] = 0.95
    inputs = DiagnosisInputs(
        task_ids=np.arange(1, n + 1, dtype=np.int64),
        embeddings=rng.normal(size=(n, 8)),
        labels=targets.argmax(axis=1),
        classes=("indoor", "person", "dog"),
        class_counts=targets.sum(axis=0),
        oos_probs=probs,
        error_scores=scores,
        error_alarm=0.5,
        targets=targets,
    )
    diag = compute_diagnosis(inputs, limits=DiagnosisSettings(), rng=rng)
    assert diag.phase == "model" and diag.classification is None
    [error] = diag.label_errors
    assert error.task == 9 and error.given == "indoor" and error.model == "dog"
    assert error.reason in (
        "tagged 'indoor'; model says it is absent (95%)",
        "not tagged 'dog'; model says it is present (90%)",
    )
