"""Slice: lift unlabeled items from groups (slices: a camera, a site, a source) where the model
does worst, so labels go where it fails.

Slice s with e_s out-of-sample errors among its n_s labeled items has the error rate
``(e_s + m * r) / (n_s + m)``, shrunk toward the overall rate r with the weight of m = PRIOR
labels, so a slice with two unlucky labels does not outrank one measured on hundreds. An
unlabeled item scores its slice's rate; items in no slice (id -1) score r.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.base import FloatArray, IntArray, Signal

#: Labels of weight the overall error rate carries in each slice's estimate.
PRIOR = 5.0


def slice_error_rates(
    labels: IntArray, oos_probs: FloatArray, slices: IntArray, *, prior: float = PRIOR
) -> tuple[NDArray[np.float64], float]:
    """(S,) shrunk out-of-sample error rate of each slice, and the overall rate.

    Args:
        labels: (n,) given class, -1 unlabeled.
        oos_probs: (n, C) out-of-sample probabilities (rows of labeled items used).
        slices: (n,) slice id >= 0, -1 for items in no slice.
        prior: weight (in labels) of the overall rate in each slice's estimate.
    """
    n_slices = int(slices.max()) + 1 if slices.size else 0
    labeled = labels >= 0
    wrong = labeled & (oos_probs.argmax(axis=1) != labels)
    overall = float(wrong.sum() / labeled.sum()) if labeled.any() else 0.0
    member = labeled & (slices >= 0)
    errors = np.bincount(slices[member], weights=wrong[member], minlength=n_slices)
    counts = np.bincount(slices[member], minlength=n_slices)
    return (errors + prior * overall) / (counts + prior), overall


def slice_scores(labels: IntArray, oos_probs: FloatArray, slices: IntArray) -> NDArray[np.float64]:
    """(n,) each item's slice error rate (the overall rate for items in no slice)."""
    rates, overall = slice_error_rates(labels, oos_probs, slices)
    out = np.full(labels.shape[0], overall, dtype=np.float64)
    inside = slices >= 0
    out[inside] = rates[slices[inside]]
    return out


SLICE = Signal(
    "slice",
    "label",
    slice_scores,
    "item's slice (a task data group) has a high out-of-sample error rate",
    multilabel=False,
)
