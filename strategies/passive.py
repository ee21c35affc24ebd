"""Passive baseline: uniform random selection among unlabeled items."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.base import Pool, Selection, eligible, top_k


def random_pool_scores(pool: Pool, *, rng: np.random.Generator) -> NDArray[np.float64]:
    """(n,) uniform random scores: the passive-learning baseline."""
    return rng.random(pool.n)


def random(pool: Pool, k: int, *, rng: np.random.Generator) -> Selection:
    """``k`` unlabeled items uniformly at random (the baseline every signal must beat)."""
    return top_k(random_pool_scores(pool, rng=rng), eligible(pool, "label"), k, rng=rng)
