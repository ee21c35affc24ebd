"""Class-level performance beyond the confusion matrix: per-class precision-recall and ROC curves
with their areas, the class pairs the model confuses most, and the gap between training and
out-of-sample accuracy across model versions (overfitting when it grows).

All from the out-of-sample (cross-fitted) probabilities of the labeled items, so no number is
measured on an item the scoring model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from backend.diagnosis.schema import ClassCurve, ConfusedPair, CurvePoint, FitGap

#: Points kept per curve (evenly spaced along it): enough for a plot, small in the JSON.
CURVE_POINTS = 40
#: Confused pairs listed, and example tasks (the most confident mistakes) per direction.
CONFUSED_PAIRS = 10
PAIR_EXAMPLES = 3
#: The training/out-of-sample gap called overfitting: at least this large and grown by at least
#: GAP_GROWTH since the first model version.
GAP_WARNING = 0.1
GAP_GROWTH = 0.05


def _thin(x: NDArray[np.float64], y: NDArray[np.float64]) -> list[list[float]]:
    """At most CURVE_POINTS (x, y) points, ends kept, rounded for the JSON."""
    keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), CURVE_POINTS)).round().astype(int))
    points: list[list[float]] = np.round(np.column_stack((x[keep], y[keep])), 4).tolist()
    return points


def class_curves(
    truth: NDArray[np.int64], probs: NDArray[np.float64], classes: Sequence[str]
) -> list[ClassCurve]:
    """One-vs-rest PR and ROC curve of every class that has positives and negatives.

    Args:
        truth: (n, C) 0/1 given labels (one-hot for single-label projects).
        probs: (n, C) out-of-sample probabilities of the same items.
        classes: the C names.
    """
    out = []
    for c, name in enumerate(classes):
        y, p = truth[:, c], probs[:, c]
        positives = int(y.sum())
        if positives == 0 or positives == len(y):
            continue
        precision, recall, _ = precision_recall_curve(y, p)
        fpr, tpr, _ = roc_curve(y, p)
        out.append(
            ClassCurve(
                name=name,
                index=c,
                support=positives,
                average_precision=round(float(average_precision_score(y, p)), 4),
                roc_auc=round(float(roc_auc_score(y, p)), 4),
                pr=_thin(recall[::-1], precision[::-1]),
                roc=_thin(fpr, tpr),
            )
        )
    return out


def confused_pairs(
    labels: NDArray[np.int64],
    probs: NDArray[np.float64],
    task_ids: NDArray[np.int64],
    classes: Sequence[str],
) -> list[ConfusedPair]:
    """Unordered class pairs by how many labeled items of one the model assigns to the other.

    Args:
        labels: (n,) given class of labeled items (-1 rows are ignored).
        probs: (n, C) out-of-sample probabilities.
        task_ids: (n,) task ids.
        classes: the C names.
    """
    labeled = labels >= 0
    given, predicted = labels[labeled], probs[labeled].argmax(axis=1)
    confidence, tasks = probs[labeled].max(axis=1), task_ids[labeled]
    k = len(classes)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (given, predicted), 1)
    both = counts + counts.T
    rows, cols = np.triu_indices(k, 1)
    order = np.argsort(-both[rows, cols], kind="stable")
    out: list[ConfusedPair] = []
    for a, b in zip(rows[order], cols[order], strict=True):
        if both[a, b] == 0 or len(out) == CONFUSED_PAIRS:
            break

        def examples(g: int, p: int) -> list[int]:
            hits = np.flatnonzero((given == g) & (predicted == p))
            top = hits[np.argsort(-confidence[hits], kind="stable")[:PAIR_EXAMPLES]]
            return [int(t) for t in tasks[top]]

        support = int(((given == a) | (given == b)).sum())
        out.append(
            ConfusedPair(
                a=classes[a],
                b=classes[b],
                a_as_b=int(counts[a, b]),
                b_as_a=int(counts[b, a]),
                share=round(float(both[a, b]) / max(support, 1), 4),
                examples_a_as_b=examples(a, b),
                examples_b_as_a=examples(b, a),
            )
        )
    return out


def fit_gap(points: Sequence[CurvePoint]) -> FitGap | None:
    """Training minus out-of-sample accuracy now and at the first version that has both."""
    gaps = [
        p.train_accuracy - p.accuracy
        for p in points
        if p.train_accuracy is not None and p.accuracy is not None
    ]
    if not gaps:
        return None
    now, first = gaps[-1], gaps[0]
    return FitGap(
        gap=round(now, 4),
        first_gap=round(first, 4),
        overfitting=now >= GAP_WARNING and now - first >= GAP_GROWTH,
    )
