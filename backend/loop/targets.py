"""What the labels say: one training target per labeled task, and the annotators' votes.

Single-label targets are the consensus of the task's annotations, weighed by each annotator's
estimated reliability where they disagree; multi-label targets keep a tag that at least half chose.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from backend.labelstudio.config import LabelConfig
from backend.model.calibration import TargetArray
from backend.store.models import Annotation
from strategies.label_quality import crowd_consensus


class NotEnoughLabels(ValueError):
    """Too few usable labels to train; the message says how many there are and what is needed."""


@dataclass(frozen=True)
class Targets:
    """Training targets, one row per labeled task.

    Attributes:
        task_ids: (n,) task ids, ascending.
        y: (n,) class indices (single-label) or (n, C) {0, 1} (multi-label).
    """

    task_ids: NDArray[np.int64]
    y: TargetArray


def _votes(annotations: Sequence[Annotation], classes: Sequence[str]) -> dict[int, list[list[str]]]:
    known = set(classes)
    votes: dict[int, list[list[str]]] = defaultdict(list)
    for ann in annotations:
        labels = [label for label in ann.labels if label in known]
        if labels:
            votes[ann.task_id].append(labels)
    return votes


def consensus_targets(annotations: Sequence[Annotation], cfg: LabelConfig) -> Targets:
    """One target per task from its live annotations.

    Single-label: the most common label; a tie goes to the label chosen most recently (annotations
    arrive ordered by id). Multi-label: a label is on when at least half the annotators chose it.
    """
    classes = list(cfg.labels)
    index = {label: i for i, label in enumerate(classes)}
    votes = _votes(annotations, classes)
    task_ids = np.array(sorted(votes), dtype=np.int64)
    if cfg.multiple:
        multi = np.zeros((len(task_ids), len(classes)), dtype=np.float32)
        for row, task in enumerate(task_ids):
            counts = Counter(label for vote in votes[int(task)] for label in set(vote))
            for label, count in counts.items():
                multi[row, index[label]] = float(2 * count >= len(votes[int(task)]))
        return Targets(task_ids, multi)
    y = np.empty(len(task_ids), dtype=np.int64)
    for row, task in enumerate(task_ids):
        firsts = [vote[0] for vote in votes[int(task)]]
        counts = Counter(firsts)
        best = max(counts.values())
        y[row] = index[next(label for label in reversed(firsts) if counts[label] == best)]
    return Targets(task_ids, _reliability_weighted(y, annotations, task_ids, index))


def annotator_matrix(
    annotations: Sequence[Annotation], task_ids: NDArray[np.int64], index: dict[str, int]
) -> tuple[NDArray[np.int64], list[int]]:
    """(n, A) first chosen class per task (rows: ``task_ids``) and annotator, -1 where none; and
    the annotator ids of the columns (0 for annotations without one)."""
    rows = {int(t): i for i, t in enumerate(task_ids)}
    annotators = sorted({a.annotator or 0 for a in annotations})
    column = {a: j for j, a in enumerate(annotators)}
    matrix = np.full((len(task_ids), max(1, len(annotators))), -1, dtype=np.int64)
    for ann in annotations:
        row = rows.get(ann.task_id)
        first = next((label for label in ann.labels if label in index), None)
        if row is not None and first is not None:
            matrix[row, column[ann.annotator or 0]] = index[first]
    return matrix, annotators


def _reliability_weighted(
    y: NDArray[np.int64],
    annotations: Sequence[Annotation],
    task_ids: NDArray[np.int64],
    index: dict[str, int],
) -> NDArray[np.int64]:
    """Where annotators disagree, the consensus weighs each by their estimated reliability
    (:func:`strategies.label_quality.crowd_consensus`); an exact tie keeps ``y`` (the label
    chosen most recently among the most common)."""
    matrix, _ = annotator_matrix(annotations, task_ids, index)
    lo = np.where(matrix >= 0, matrix, np.iinfo(np.int64).max).min(axis=1)
    disputed = (matrix >= 0).sum(axis=1) >= 2
    disputed &= lo != matrix.max(axis=1)
    if not disputed.any():
        return y
    crowd = crowd_consensus(matrix, len(index))
    top = np.sort(crowd.consensus, axis=1)
    clear = top[:, -1] - top[:, -2] > 1e-9
    return np.where(disputed & clear, crowd.consensus.argmax(axis=1), y).astype(np.int64)


def check_enough(targets: Targets, multiple: bool) -> None:
    """Raise :class:`NotEnoughLabels` below 4 labeled tasks or 2 classes."""
    n = len(targets.task_ids)
    distinct = int((targets.y.sum(axis=0) > 0).sum()) if multiple else len(np.unique(targets.y))
    if n < 4 or distinct < 2:
        raise NotEnoughLabels(
            f"{n} labeled tasks covering {distinct} classes; at least 4 labeled tasks "
            "and 2 classes are needed to train"
        )
