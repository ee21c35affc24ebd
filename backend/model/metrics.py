"""Cross-validated metrics and multi-label thresholds, computed from out-of-sample probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from backend.model.calibration import TargetArray

THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)
MIN_PER_SIDE = 3  # positives and negatives a label needs before its threshold is tuned
#: The threshold of a tag no labeled item has: above every probability, so it is never suggested
#: (its head learned nothing but "absent", and may not even have learned that yet).
NEVER = 2.0


def multilabel_thresholds(
    probs: NDArray[np.float64], targets: TargetArray, *, default: float
) -> NDArray[np.float64]:
    """(C,) per-label thresholds maximising out-of-sample F1 (ties: closest to ``default``).

    A label with fewer than ``MIN_PER_SIDE`` positives or negatives keeps ``default``; a label no
    item has gets :data:`NEVER`.
    """
    thresholds = np.full(probs.shape[1], default)
    for c in range(probs.shape[1]):
        positives = int(targets[:, c].sum())
        if positives == 0:
            thresholds[c] = NEVER
            continue
        if min(positives, len(targets) - positives) < MIN_PER_SIDE:
            continue
        scores = [
            f1_score(targets[:, c], probs[:, c] >= t, zero_division=0.0) for t in THRESHOLD_GRID
        ]
        best = np.flatnonzero(np.isclose(scores, max(scores)))
        thresholds[c] = THRESHOLD_GRID[best[np.abs(THRESHOLD_GRID[best] - default).argmin()]]
    return thresholds


def _macro_f1(per_class: dict[str, dict[str, float]]) -> float:
    """Mean F1 over the classes that occur in the targets."""
    present = [m["f1"] for m in per_class.values() if m["support"] > 0]
    return float(np.mean(present)) if present else 0.0


def _per_class(
    y_true: TargetArray,
    y_pred: NDArray[np.int64],
    classes: Sequence[str],
    labels: list[int] | None,
) -> dict[str, dict[str, float]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0.0
    )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }


def classification_metrics(
    probs: NDArray[np.float64],
    targets: TargetArray,
    *,
    classes: Sequence[str],
    multilabel: bool,
    thresholds: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and confusion matrices (JSON-ready).

    Single-label: ``accuracy``, ``macro_f1``, ``per_class``, ``confusion_matrix`` (C x C, rows =
    true class, columns = predicted).
    Multi-label: ``accuracy`` (exact set match), ``label_accuracy`` (per decision), ``macro_f1``,
    ``per_class``, ``confusion_matrix`` (per label [[tn, fp], [fn, tp]]), ``thresholds``.
    """
    if multilabel:
        cut = thresholds if thresholds is not None else np.full(len(classes), 0.5)
        pred = (probs >= cut[None, :]).astype(np.int64)
        per_class = _per_class(targets, pred, classes, None)
        matrices = [
            confusion_matrix(targets[:, c], pred[:, c], labels=[0, 1]).tolist()
            for c in range(len(classes))
        ]
        return {
            "accuracy": float((pred == targets).all(axis=1).mean()),
            "label_accuracy": float((pred == targets).mean()),
            "macro_f1": _macro_f1(per_class),
            "per_class": per_class,
            "confusion_matrix": matrices,
            "thresholds": [float(t) for t in cut],
        }
    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    per_class = _per_class(targets, pred, classes, labels)
    return {
        "accuracy": float((pred == targets).mean()),
        "macro_f1": _macro_f1(per_class),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(targets, pred, labels=labels).tolist(),
    }
