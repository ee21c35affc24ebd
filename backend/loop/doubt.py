"""Why a labeled item looks mislabeled, in words: the wording of review flags and the diagnosis.

The cycle's review stage and the dashboard's label-error candidates name the same given label,
the model's prediction and how sure it is, so both build them here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.loop.contract import Snapshot
from strategies.disagreement import doubted_labels, judged_tags


@dataclass(frozen=True)
class Doubt:
    """Why a labeled item looks mislabeled, in words: its given and predicted labels (multi-label:
    tags), the reason, and the model's probability that the doubted label is wrong."""

    reason: str
    given: str
    predicted: str
    confidence: float


def doubt_of(
    names: Sequence[str],
    labels: NDArray[np.int64],
    oos_probs: NDArray[np.floating[Any]] | None,
    targets: NDArray[np.int64] | None,
) -> Callable[[int], Doubt | None]:
    """The doubt about row ``i`` of a pool (None without out-of-sample probabilities).

    Single-label: the model's top class against the given one. Multi-label (``targets``): the
    most doubted tag among those the labels can judge (:func:`judged_tags`, computed once here).
    """
    if oos_probs is None:
        return lambda _row: None
    if targets is None:
        return lambda row: _class_doubt(names, int(labels[row]), oos_probs[row])
    judged = judged_tags(labels >= 0, targets)
    return lambda row: _tag_doubt(names, targets[row], oos_probs[row], judged)


def _class_doubt(names: Sequence[str], given: int, probs: NDArray[np.floating[Any]]) -> Doubt:
    top = int(np.argmax(probs))
    confidence = float(probs[top])
    reason = f"labeled {names[given]!r}; model says {names[top]!r} ({confidence:.0%})"
    return Doubt(reason, names[given], names[top], confidence)


def tag_names(names: Sequence[str], tags: NDArray[np.int64] | NDArray[np.bool_]) -> str:
    """The tags set in a (C,) 0/1 row, as flags and reasons name them."""
    return ", ".join(names[i] for i in np.flatnonzero(tags)) or "(no tag)"


def _tag_doubt(
    names: Sequence[str],
    tags: NDArray[np.int64],
    probs: NDArray[np.floating[Any]],
    judged: NDArray[np.bool_],
) -> Doubt:
    given = tag_names(names, tags)
    predicted = tag_names(names, (probs >= 0.5) & judged)
    doubted = int(doubted_labels(tags[None], probs[None], judged)[0])
    p, name = float(probs[doubted]), names[doubted]
    if tags[doubted]:
        return Doubt(
            f"tagged {name!r}; model says it is absent ({1 - p:.0%})", given, predicted, 1 - p
        )
    return Doubt(f"not tagged {name!r}; model says it is present ({p:.0%})", given, predicted, p)


def given_labels(snap: Snapshot) -> dict[int, str]:
    """Task id -> its given label(s) now, written as review flags write them (``Doubt.given``)."""
    names = snap.cfg.labels
    if snap.cfg.multiple:
        return {
            int(t): tag_names(names, y)
            for t, y in zip(snap.targets.task_ids, snap.targets.y, strict=True)
        }
    return {
        int(t): names[int(y)] for t, y in zip(snap.targets.task_ids, snap.targets.y, strict=True)
    }
