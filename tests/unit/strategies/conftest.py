"""Synthetic pools for the strategy tests: every input present, some items labeled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from strategies import Pool

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
    }


@pytest.fixture
def arrays() -> dict[str, Any]:
    return make_arrays()


@pytest.fixture
def full_pool(arrays: dict[str, Any]) -> Pool:
    return Pool(**arrays)


@pytest.fixture
def rng_factory() -> Callable[[int], np.random.Generator]:
    return np.random.default_rng
