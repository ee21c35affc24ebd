"""Passive baseline: uniform random selection among unlabeled items."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.base import Signal


def random_scores(n: int, *, rng: np.random.Generator) -> NDArray[np.float64]:
    """(n,) uniform random scores: the passive-learning baseline every signal must beat."""
    return rng.random(n)


RANDOM = Signal("random", "label", random_scores, "uniform random")
