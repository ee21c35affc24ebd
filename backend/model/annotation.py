"""Turning one item's calibrated probabilities into a pre-annotation and its score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def predict_annotation(
    probs_row: NDArray[np.float64],
    classes: Sequence[str],
    *,
    multilabel: bool,
    thresholds: NDArray[np.float64] | Sequence[float] | None = None,
) -> tuple[list[str], float]:
    """The suggested label(s) for one item and how sure the model is of the suggestion.

    Single-label: the top class; ``score`` is its calibrated probability, in [1/C, 1].

    Multi-label: every label whose probability reaches its threshold (possibly none); ``score`` is
    the mean confidence of all C per-label decisions, where a decision's confidence is ``p`` for a
    label suggested and ``1 - p`` for a label left out. It is 1 when the model is sure of every
    label either way and falls toward 0.5 or lower as decisions become coin flips.

    Args:
        probs_row: (C,) calibrated probabilities of one item.
        classes: the C label names.
        multilabel: apply thresholds instead of taking the top class.
        thresholds: (C,) per-label thresholds (multi-label only; default 0.5 each).

    Returns:
        (labels, score), labels in ``classes`` order.
    """
    probs = np.asarray(probs_row, dtype=np.float64)
    if not multilabel:
        top = int(probs.argmax())
        return [classes[top]], float(probs[top])
    cut = np.full(len(probs), 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
    chosen = probs >= cut
    confidence = np.where(chosen, probs, 1.0 - probs)
    return [classes[i] for i in np.flatnonzero(chosen)], float(confidence.mean())
