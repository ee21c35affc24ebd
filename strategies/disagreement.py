"""Disagreement: within a committee (labeling) and against the given labels (review).

- Committee vote entropy and max KL divergence to the consensus, on unlabeled items.
- Model vs annotation on labeled items, from out-of-sample probabilities: self-confidence,
  normalized margin and confident learning (per-class thresholds, the off-diagonals of the
  confident joint; the same mask as ``cleanlab.filter.find_label_issues(filter_by=
  "confident_learning")``).
- Annotator vs annotator on items with several annotations, optionally with the model as one more
  (soft) voter.

Kernels return (n,) float64, higher = more disagreement / more likely a wrong label.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies import kernels
from strategies.base import (
    FloatArray,
    IntArray,
    Signal,
    committee_rowwise,
    compiled_rowwise,
    fast_committee,
    float_bits,
    rowwise,
    xlogy_sum,
)

#: cleanlab's clip for confident thresholds and its fuzzy comparison, for an identical mask.
_THRESHOLD_FLOOR = 2e-6
_FUZZ = 1e-6


def _entropy_rows(p: FloatArray) -> FloatArray:
    out: FloatArray = -(p * np.log(np.maximum(p, np.finfo(p.dtype).tiny))).sum(axis=-1)
    return out


def vote_entropy_scores(committee: FloatArray) -> NDArray[np.float64]:
    """Entropy of the members' hard votes.

    Args:
        committee: (M, n, C) member probabilities; each member votes for its argmax class.

    Returns:
        (n,) float64 in [0, log(min(M, C))], higher = members vote more differently.
    """
    # H = -sum_k (c_k/M) log(c_k/M) = -(1/M) sum_m log(c_m/M), where c_m counts the members that
    # vote as member m does: a table lookup per member, no (n, C) vote counts.
    n_members = committee.shape[0]
    with np.errstate(divide="ignore"):  # agree >= 1, so log(0) in slot 0 is never looked up
        table = -np.log(np.arange(n_members + 1) / n_members) / n_members
    return compiled_rowwise(kernels.vote_entropy, float_bits(committee), table)


def _kl_consensus_block(block: FloatArray, scratch: FloatArray) -> FloatArray:
    # KL(p_m || q) = sum p_m log p_m - sum p_m log q: the consensus log is taken once per chunk,
    # not once per member; einsum sums the products without a ratio or product temporary.
    n_members = block.shape[0]
    mean = np.sum(block, axis=0, out=scratch[n_members])
    mean *= 1.0 / n_members
    own = xlogy_sum("mrc,mrc->mr", block, block, scratch[:n_members])
    cross = xlogy_sum("mrc,rc->mr", block, mean, scratch[n_members + 1])
    out: FloatArray = np.maximum(own - cross, 0.0).max(axis=0)
    return out


def kl_consensus_scores(committee: FloatArray) -> NDArray[np.float64]:
    """Largest KL divergence of a member from the consensus (mean) distribution.

    Computed in the committee's dtype: float32 committees in one compiled pass
    (:func:`strategies.kernels.kl_consensus32`), float64 ones in numpy chunks.

    Args:
        committee: (M, n, C) member probabilities.

    Returns:
        (n,) float64 >= 0, higher = some member disagrees more with the consensus.
    """
    if fast_committee(committee):
        return compiled_rowwise(kernels.kl_consensus32, committee)
    return committee_rowwise(_kl_consensus_block, committee)


def given_label_probs(labels: IntArray, probs: FloatArray) -> NDArray[np.float64]:
    """(n,) probability of each item's given label (0 where unlabeled)."""
    rows = np.arange(labels.shape[0])
    return np.where(labels >= 0, probs[rows, np.maximum(labels, 0)], 0.0).astype(np.float64)


def self_confidence_scores(
    labels: IntArray, oos_probs: FloatArray, targets: IntArray | None = None
) -> NDArray[np.float64]:
    """1 - out-of-sample probability of the given label (cleanlab's self-confidence, flipped);
    multi-label: of the least believed label's given value
    (:func:`multilabel_self_confidence_scores`).

    Args:
        labels: (n,) given class, -1 unlabeled (scored 0); multi-label: >= 0 marks labeled.
        oos_probs: (n, C) out-of-sample probabilities.
        targets: (n, C) 0/1 given labels of a multi-label pool; None for single-label.

    Returns:
        (n,) float64 in [0, 1], higher = more likely mislabeled.
    """
    if targets is not None:
        return multilabel_self_confidence_scores(labels >= 0, targets, oos_probs)
    return np.where(labels >= 0, 1.0 - given_label_probs(labels, oos_probs), 0.0)


def _normalized_margin_rows(probs: FloatArray, labels: IntArray) -> NDArray[np.float64]:
    given = given_label_probs(labels, probs)
    others = np.array(probs, dtype=np.float64)  # one chunk, not the whole (n, C) matrix
    others[np.arange(labels.shape[0]), np.maximum(labels, 0)] = -np.inf
    best_other = others.max(axis=1, initial=0.0)
    return np.where(labels >= 0, 1.0 - (given - best_other + 1.0) / 2.0, 0.0)


def normalized_margin_scores(labels: IntArray, oos_probs: FloatArray) -> NDArray[np.float64]:
    """1 - cleanlab's normalized margin ``(p_given - max_other + 1) / 2``.

    Args:
        labels: (n,) given class, -1 unlabeled (scored 0).
        oos_probs: (n, C) out-of-sample probabilities.

    Returns:
        (n,) float64 in [0, 1], higher = another class beats the given one by more.
    """
    return rowwise(_normalized_margin_rows, oos_probs, labels)


def confident_thresholds(labels: IntArray, probs: FloatArray) -> NDArray[np.float64]:
    """(C,) per-class threshold: mean probability of class c over items labeled c.

    Classes with no labeled item get 2.0, so nothing is ever confidently predicted as them.
    """
    n_classes = probs.shape[1]
    mask = labels >= 0
    counts = np.bincount(labels[mask], minlength=n_classes)
    sums = np.bincount(labels[mask], weights=probs[mask, labels[mask]], minlength=n_classes)
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 2.0)
    out: NDArray[np.float64] = np.maximum(thresholds, _THRESHOLD_FLOOR)
    return out


def confident_learning_mask(labels: IntArray, probs: FloatArray) -> NDArray[np.bool_]:
    """Items counted off the diagonal of the confident joint, as in cleanlab's confident learning.

    An item is flagged when some class clears its per-class threshold, the class it is confidently
    assigned to differs from the given label, and the given label is not the argmax prediction.

    Args:
        labels: (n,) given class, -1 unlabeled (never flagged).
        probs: (n, C) out-of-sample probabilities.

    Returns:
        (n,) bool, True = likely label issue.
    """
    thresholds = confident_thresholds(labels, probs) - _FUZZ

    def flagged(p: FloatArray, given: IntArray) -> NDArray[np.bool_]:
        confident = p >= thresholds
        n_confident = confident.sum(axis=1)
        guess = np.where(n_confident > 1, p.argmax(axis=1), confident.argmax(axis=1))
        bumped = np.array(p, dtype=np.float64)
        bumped[np.arange(given.shape[0]), np.maximum(given, 0)] += _FUZZ
        predicted_given = bumped.argmax(axis=1) == given
        out: NDArray[np.bool_] = (
            (given >= 0) & (n_confident > 0) & (guess != given) & ~predicted_given
        )
        return out

    return rowwise(flagged, probs, labels).astype(bool)


def confident_learning_scores(
    labels: IntArray, oos_probs: FloatArray, targets: IntArray | None = None
) -> NDArray[np.float64]:
    """Flagged items first (score 1 + normalized-margin score), then the rest by normalized margin;
    multi-label (``targets`` given): the one-vs-rest flag plus the self-confidence score of the
    least believed label. Arguments as :func:`self_confidence_scores`'.

    Returns:
        (n,) float64 in [0, 2], higher = more likely mislabeled.
    """
    if targets is not None:
        labeled = labels >= 0
        mask = multilabel_confident_learning_mask(labeled, targets, oos_probs)
        return mask + multilabel_self_confidence_scores(labeled, targets, oos_probs)
    return confident_learning_mask(labels, oos_probs) + normalized_margin_scores(labels, oos_probs)


def judged_tags(labeled: NDArray[np.bool_], targets: IntArray) -> NDArray[np.bool_]:
    """(C,) tags the labels can teach a model both ways: given to some labeled item and withheld
    from another. A tag nobody (or everybody) was given tells nothing about an item's tags."""
    given = targets[labeled]
    out: NDArray[np.bool_] = (given.max(axis=0, initial=0) > 0) & (
        given.min(axis=0, initial=1) == 0
    )
    return out


def label_confidences(
    targets: IntArray, probs: FloatArray, judged: NDArray[np.bool_] | None = None
) -> NDArray[np.float64]:
    """(n, C) out-of-sample probability of each label's given value in a multi-label pool:
    ``p`` where the label was given, ``1 - p`` where it was not; 1 for tags not ``judged``."""
    confidences = np.where(targets > 0, probs, 1.0 - probs).astype(np.float64)
    if judged is not None:
        confidences[:, ~judged] = 1.0
    return confidences


def doubted_labels(
    targets: IntArray, probs: FloatArray, judged: NDArray[np.bool_] | None = None
) -> IntArray:
    """(n,) the label whose given value the model believes least, per item (multi-label)."""
    out: IntArray = label_confidences(targets, probs, judged).argmin(axis=1).astype(np.int64)
    return out


def multilabel_self_confidence_scores(
    labeled: NDArray[np.bool_], targets: IntArray, probs: FloatArray
) -> NDArray[np.float64]:
    """1 - the probability of the least believed label's given value (multi-label).

    The strictest of cleanlab's per-label aggregations: an item is as suspicious as its most
    doubted label (one wrong tag among ten is still a wrong label). Only :func:`judged_tags`
    count: a model never shown a tag (or never shown its absence) has no opinion worth a review.

    Args:
        labeled: (n,) True where the item is labeled (others score 0).
        targets: (n, C) given labels, 0 or 1.
        probs: (n, C) out-of-sample per-label probabilities.

    Returns:
        (n,) float64 in [0, 1], above 0.5 when the model disagrees with some given value.
    """
    judged = judged_tags(labeled, targets)
    worst = label_confidences(targets, probs, judged).min(axis=1, initial=1.0)
    return np.where(labeled, 1.0 - worst, 0.0)


def multilabel_confident_learning_mask(
    labeled: NDArray[np.bool_], targets: IntArray, probs: FloatArray
) -> NDArray[np.bool_]:
    """One-vs-rest confident learning: an item is flagged when, for some label, the binary problem
    "has this label" flags it (:func:`confident_learning_mask` with that problem's per-class
    thresholds), as ``cleanlab.multilabel_classification.filter.find_label_issues`` does.

    Returns:
        (n,) bool, True = some given label value is likely wrong.
    """
    flagged = np.zeros(labeled.shape[0], dtype=bool)
    for label in range(probs.shape[1]):  # one binary problem per label, vectorized over items
        given = np.where(labeled, targets[:, label], -1).astype(np.int64)
        binary = np.stack((1.0 - probs[:, label], probs[:, label]), axis=1)
        flagged |= confident_learning_mask(given, binary)
    return flagged


def annotation_counts(annotations: IntArray, n_classes: int) -> NDArray[np.float64]:
    """(n, C) number of annotators choosing each class per item."""
    n = annotations.shape[0]
    rows = np.broadcast_to(np.arange(n)[:, None], annotations.shape)
    valid = annotations >= 0
    flat = rows[valid] * n_classes + annotations[valid]
    return np.bincount(flat, minlength=n * n_classes).reshape(n, n_classes).astype(np.float64)


def annotator_disagreement_scores(
    annotations: IntArray,
    n_classes: int,
    *,
    model_probs: FloatArray | None = None,
    model_weight: float = 1.0,
) -> NDArray[np.float64]:
    """Entropy of the annotators' votes, optionally with the model as one more soft voter.

    Args:
        annotations: (n, A) per-annotator class, -1 where none.
        n_classes: C.
        model_probs: (n, C) out-of-sample probabilities to add as a voter; None = annotators only.
        model_weight: weight of the model's vote relative to one annotator.

    Returns:
        (n,) float64 >= 0; 0 for items with fewer than two votes.
    """
    votes = annotation_counts(annotations, n_classes)
    if model_probs is not None:
        has_vote = votes.sum(axis=1, keepdims=True) > 0
        votes = votes + np.where(has_vote, model_weight * model_probs, 0.0)
    total = votes.sum(axis=1, keepdims=True)
    enough = (total[:, 0] >= 2.0 - 1e-9) if model_probs is None else (total[:, 0] > 1.0)
    return np.where(enough, _entropy_rows(votes / np.maximum(total, 1e-12)), 0.0)


def annotator_scores(
    annotations: IntArray, labels: IntArray, n_classes: int | None
) -> NDArray[np.float64]:
    """(n,) entropy of the annotators' votes over the pool's classes (without probabilities, the
    classes up to the largest one given)."""
    if n_classes is None:
        n_classes = int(max(annotations.max(initial=-1), labels.max(initial=-1))) + 1
    return annotator_disagreement_scores(annotations, n_classes)


def annotator_model_scores(annotations: IntArray, oos_probs: FloatArray) -> NDArray[np.float64]:
    """(n,) entropy of the annotators' votes plus the model's soft vote."""
    # Only out-of-sample probabilities: in-sample ones have already learned the given labels.
    return annotator_disagreement_scores(annotations, oos_probs.shape[1], model_probs=oos_probs)


VOTE_ENTROPY = Signal(
    "vote_entropy",
    "label",
    vote_entropy_scores,
    "entropy of committee members' hard votes",
    multilabel=False,
)
KL_CONSENSUS = Signal(
    "kl_consensus",
    "label",
    kl_consensus_scores,
    "largest KL divergence of a member from the committee consensus",
    multilabel=False,
)
SELF_CONFIDENCE = Signal(
    "self_confidence",
    "review",
    self_confidence_scores,
    "out-of-sample probability of the given label (multi-label: of some label's) is low",
    alarm=0.5,
)
NORMALIZED_MARGIN = Signal(
    "normalized_margin",
    "review",
    normalized_margin_scores,
    "another class beats the given label",
    multilabel=False,
    alarm=0.5,
)
CONFIDENT_LEARNING = Signal(
    "confident_learning",
    "review",
    confident_learning_scores,
    "confident learning: confidently predicted as another class (per-class thresholds; "
    "multi-label: one-vs-rest per label)",
    alarm=1.0,
)
ANNOTATOR_DISAGREEMENT = Signal(
    "annotator_disagreement",
    "review",
    annotator_scores,
    "annotators chose different classes",
    multilabel=False,
    alarm=0.0,
)
ANNOTATOR_MODEL_DISAGREEMENT = Signal(
    "annotator_model_disagreement",
    "review",
    annotator_model_scores,
    "annotators and the model (as one more voter) disagree",
    multilabel=False,
    alarm=0.5,
)
