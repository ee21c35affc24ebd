"""Balance: lift unlabeled items the model puts in classes that are rare among the labels.

Class c with l_c of L labels (C classes) gets the weight ``w_c = (L + C) / (C * (l_c + 1))``: 1 when
labels are spread evenly, large for classes with few labels. An item's score is the expected weight
of its class under the model, ``sum_c p_c * w_c``. Multi-label pools count each label's positives.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.base import FloatArray, IntArray, Signal


def class_weights(labels: IntArray, n_classes: int) -> NDArray[np.float64]:
    """(C,) rarity weight of each class among the labeled items (see the module docstring)."""
    given = labels[labels >= 0]
    counts = np.bincount(given, minlength=n_classes)[:n_classes]
    return (given.shape[0] + n_classes) / (n_classes * (counts + 1.0))


def balance_scores(
    probs: FloatArray, labels: IntArray, *, multilabel: bool = False
) -> NDArray[np.float64]:
    """(n,) expected rarity weight of each item's predicted class.

    Args:
        probs: (n, C) class probabilities (multi-label: per-label probabilities).
        labels: (n,) given class, -1 unlabeled (multi-label: >= 0 marks labeled).
    """
    if multilabel:
        # Labels of a multi-label pool do not name a class; rarity comes from predicted positives
        # of labeled items, which is what the model learned from.
        positives = (probs[labels >= 0] >= 0.5).sum(axis=0)
        n_labels = probs.shape[1]
        weights = (positives.sum() + n_labels) / (n_labels * (positives + 1.0))
    else:
        weights = class_weights(labels, probs.shape[1])
    return np.asarray(probs @ weights.astype(probs.dtype), dtype=np.float64)


BALANCE = Signal(
    "balance", "label", balance_scores, "predicted to be in a class rare among the labels"
)
