"""Synthetic pools for the strategy tests: every input present, some items labeled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from strategies import Pool
from strategies.base import CHOSEN, RANDOM_ORDER

N_ITEMS, N_CLASSES, N_MEMBERS, N_DIMS, N_ANNOTATORS = 120, 4, 3, 6, 3


def make_arrays(n: int = N_ITEMS, *, seed: int = 0, n_labeled: int = 30) -> dict[str, Any]:
    """Every array a Pool takes, random but valid; the first ``n_labeled`` items are labeled."""
    rng = np.random.default_rng(seed)
    labels = np.full(n, -1, dtype=np.int64)
    n_labeled = min(n_labeled, n)
    labels[:n_labeled] = rng.integers(N_CLASSES, size=n_labeled)
    annotations = np.full((n, N_ANNOTATORS), -1, dtype=np.int64)
    annotations[:n_labeled, 0] = labels[:n_labeled]
    annotations[: n_labeled // 2, 1] = rng.integers(N_CLASSES, size=n_labeled // 2)
    centers = rng.normal(scale=4.0, size=(N_CLASSES, N_DIMS))
    return {
        "labels": labels,
        "probs": rng.dirichlet(np.ones(N_CLASSES), size=n),
        "committee": rng.dirichlet(np.ones(N_CLASSES), size=(N_MEMBERS, n)),
        "embeddings": centers[rng.integers(N_CLASSES, size=n)] + rng.normal(size=(n, N_DIMS)),
        "oos_probs": rng.dirichlet(np.ones(N_CLASSES), size=n),
        "annotations": annotations,
        "slices": rng.integers(-1, 3, size=n),
        "origin": rng.integers(2, size=n),
    }


def queue_and_audit(seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Pool arrays of 150 labels the queue chose for their low margin (hard items) and 50 drawn
    at random (``origin`` says which), 16 of all 200 wrong, with nearest-centroid probabilities of
    the given labels standing in for the model's out-of-sample ones; and the planted rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 8)) * 3
    y = np.repeat(np.arange(5), 300)
    x = centres[y] + 1.5 * rng.normal(size=(len(y), 8))

    def centroid_probs(labels: np.ndarray) -> np.ndarray:
        rows = labels >= 0
        kept = np.stack([x[rows][labels[rows] == c].mean(axis=0) for c in range(5)])
        logits = -((x[:, None, :] - kept[None]) ** 2).sum(axis=2) / 4.0
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    top2 = np.sort(centroid_probs(y), axis=1)[:, -2:]
    hard = np.argsort(top2[:, 1] - top2[:, 0])[:150]
    audit = rng.choice(np.setdiff1d(np.arange(len(y)), hard), 50, replace=False)
    planted = rng.choice(np.concatenate([hard, audit]), 16, replace=False)
    labels = np.full(len(y), -1, dtype=np.int64)
    labels[hard], labels[audit] = y[hard], y[audit]
    labels[planted] = (y[planted] + rng.integers(1, 5, 16)) % 5
    origin = np.full(len(y), RANDOM_ORDER, dtype=np.int64)
    origin[hard] = CHOSEN
    arrays = {
        "labels": labels,
        "oos_probs": centroid_probs(labels),
        "embeddings": x,
        "origin": origin,
    }
    return arrays, planted


@pytest.fixture
def arrays() -> dict[str, Any]:
    return make_arrays()


@pytest.fixture
def full_pool(arrays: dict[str, Any]) -> Pool:
    return Pool(**arrays)


@pytest.fixture
def rng_factory() -> Callable[[int], np.random.Generator]:
    return np.random.default_rng
