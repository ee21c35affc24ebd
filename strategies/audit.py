"""The audit sample: a uniformly random share of every batch, and what its labels say.

Every strategy picks the items it finds informative, so accuracy measured on the items it picked
(cross-fitting included) describes the hard items, not the pool. A share of each pushed batch is
therefore drawn uniformly at random from the unlabeled pool and recorded as such. The model's
prediction for such an item is made before its label arrives (prequential), so the fraction of
audit items the model got right is an unbiased estimate of its accuracy on the pool it served,
with an exact binomial confidence interval (Clopper-Pearson's: it covers the truth at least as
often as it says for every accuracy and count; Wilson's 90 % interval covers an accuracy of 0.8 to
0.995 in as few as 79-87 % of draws at 5-50 audit items, and accuracy near 1 is where a model
soon is). Outcomes of several models (a Poisson binomial) only make it more conservative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import beta as beta_dist

from strategies.base import IntArray

#: Two-sided confidence of the interval reported with every estimate.
CONFIDENCE = 0.9


def audit_count(batch_size: int, share: float) -> int:
    """Audit items in a batch of ``batch_size``: ``round(share * batch_size)``, at least 1 when
    the share is positive (a batch of 5 at 10 % still carries one)."""
    if share <= 0.0:
        return 0
    return min(batch_size, max(1, round(share * batch_size)))


def audit_slots(n: int, batch_size: int, share: float) -> NDArray[np.bool_]:
    """(n,) which of the first ``n`` queue positions are audit slots: each batch of
    ``batch_size`` (the last one possibly shorter) gets :func:`audit_count` of its own length,
    evenly spaced through it, so a queue shorter than one batch keeps its share too."""
    slots = np.zeros(n, dtype=bool)
    for start in range(0, n, batch_size):
        length = min(batch_size, n - start)
        count = audit_count(length, share)
        if count:
            slots[start + (np.arange(count) * length) // count + length // (2 * count)] = True
    return slots


def draw_audit(candidates: IntArray, count: int, *, rng: np.random.Generator) -> IntArray:
    """``count`` items drawn uniformly without replacement from ``candidates`` (fewer if short).

    Args:
        candidates: (m,) unlabeled item indices.
        count: how many to draw.
        rng: the only source of randomness.
    """
    count = min(count, int(candidates.shape[0]))
    return np.asarray(rng.choice(candidates, size=count, replace=False), dtype=np.int64)


@dataclass(frozen=True)
class AccuracyEstimate:
    """Accuracy estimated from ``n`` audit items, ``correct`` of them predicted right.

    Attributes:
        n: audit items with a prediction made before their label arrived.
        correct: how many of those the model predicted right.
        accuracy: ``correct / n`` (NaN when ``n`` is 0).
        low, high: the exact (Clopper-Pearson) interval at ``confidence``.
        confidence: two-sided confidence of ``[low, high]``.
    """

    n: int
    correct: int
    accuracy: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready fields (the cycles API, the diagnosis)."""
        return {
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
        }


def exact_interval(correct: int, n: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial proportion; (0, 1) when ``n`` is 0."""
    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if correct == 0 else float(beta_dist.ppf(tail, correct, n - correct + 1))
    high = 1.0 if correct == n else float(beta_dist.ppf(1.0 - tail, correct + 1, n - correct))
    return low, high


def prequential_accuracy(
    correct: NDArray[np.bool_], *, confidence: float = CONFIDENCE
) -> AccuracyEstimate:
    """Accuracy and interval from (n,) outcomes of audit items (True = predicted right).

    Each outcome must come from a prediction made before the item's label was known, on an item
    drawn uniformly from the unlabeled pool; then the mean is unbiased for the serving models'
    accuracy on that pool.
    """
    n = int(correct.shape[0])
    hits = int(np.count_nonzero(correct))
    low, high = exact_interval(hits, n, confidence=confidence)
    return AccuracyEstimate(n, hits, hits / n if n else math.nan, low, high, confidence)
