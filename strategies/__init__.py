"""Selection signals for active learning: pure functions over arrays, one read-only registry.

Each signal is defined once, beside its kernel, as a :class:`strategies.base.Signal`: ``kind`` is
"label" (ranks only unlabeled items, for the labeling queue) or "review" (only labeled items, for
the review queue); ``needs`` (the pool inputs it requires) is read off the kernel's parameters.
Every entry is called as ``REGISTRY[name](pool, k, *, rng, **options) -> Selection`` and scores
the pool with ``REGISTRY[name].score(pool, rng=rng)``. Combine several with
:func:`strategies.combine.prioritize`.
"""

from __future__ import annotations

from strategies import (
    balance,
    coldstart,
    coverage,
    disagreement,
    label_quality,
    passive,
    slices,
    uncertainty,
)
from strategies.base import Pool, Selection, Signal, registry

REGISTRY = registry(
    # --- labeling signals: unlabeled items only ---------------------------------------------
    passive.RANDOM,
    uncertainty.LEAST_CONFIDENCE,
    uncertainty.MARGIN,
    uncertainty.ENTROPY,
    uncertainty.BALD,
    disagreement.VOTE_ENTROPY,
    disagreement.KL_CONSENSUS,
    coverage.COVERAGE,
    coverage.CORESET,
    coldstart.TYPICALITY,
    coldstart.COLD_START,
    balance.BALANCE,
    slices.SLICE,
    # --- review signals: labeled items only -------------------------------------------------
    label_quality.SUSPICION,
    disagreement.SELF_CONFIDENCE,
    disagreement.NORMALIZED_MARGIN,
    disagreement.CONFIDENT_LEARNING,
    disagreement.ANNOTATOR_DISAGREEMENT,
    disagreement.ANNOTATOR_MODEL_DISAGREEMENT,
)

__all__ = ["REGISTRY", "Pool", "Selection", "Signal"]
