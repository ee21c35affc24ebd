"""Pre-annotations and their scores from one row of probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from backend.model.annotation import predict_annotation


def test_single_label_takes_the_top_class_and_its_probability() -> None:
    labels, score = predict_annotation(
        np.array([0.1, 0.7, 0.2]), ["cat", "dog", "bird"], multilabel=False
    )
    assert labels == ["dog"]
    assert score == pytest.approx(0.7)


def test_multilabel_uses_per_label_thresholds_and_mean_decision_confidence() -> None:
    labels, score = predict_annotation(
        np.array([0.9, 0.35, 0.2]),
        ["indoor", "person", "car"],
        multilabel=True,
        thresholds=np.array([0.5, 0.3, 0.5]),
    )
    assert labels == ["indoor", "person"]
    assert score == pytest.approx((0.9 + 0.35 + 0.8) / 3)


def test_multilabel_may_suggest_nothing() -> None:
    labels, score = predict_annotation(np.array([0.1, 0.2]), ["a", "b"], multilabel=True)
    assert labels == []
    assert score == pytest.approx(0.85)


def test_a_tag_nobody_gave_is_never_suggested() -> None:
    from backend.model.metrics import NEVER, multilabel_thresholds

    rng = np.random.default_rng(0)
    targets = (rng.random((40, 3)) < 0.5).astype(np.int64)
    targets[:, 2] = 0  # no labeled item has tag "car"
    probs = np.clip(targets + rng.normal(0, 0.2, targets.shape), 0, 1)
    probs[:, 2] = 0.7  # an untrained head's opinion
    thresholds = multilabel_thresholds(probs, targets, default=0.5)
    assert thresholds[2] == NEVER and thresholds[:2].max() < 1.0
    labels, _ = predict_annotation(
        np.array([0.9, 0.1, 0.99]), ["indoor", "person", "car"], multilabel=True,
        thresholds=thresholds,
    )  # fmt: skip
    assert labels == ["indoor"]
