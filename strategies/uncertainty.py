"""Uncertainty of the model on unlabeled items: least confidence, margin, entropy, BALD.

Kernels take arrays and return (n,) float64 scores, higher = more uncertain. Multi-label pools
(per-label sigmoid probabilities) are scored per label as binary problems and then aggregated.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies import kernels
from strategies.base import (
    FloatArray,
    Signal,
    committee_rowwise,
    compiled_rowwise,
    fast_committee,
    float_bits,
    rowwise,
    xlogy_sum,
)


def _xlogx(p: FloatArray) -> FloatArray:
    out: FloatArray = p * np.log(np.maximum(p, np.finfo(p.dtype).tiny))
    return out


def _entropy_rows(p: FloatArray) -> FloatArray:
    out: FloatArray = -_xlogx(p).sum(axis=-1)
    return out


def _binary_entropy_rows(p: FloatArray) -> FloatArray:
    out: FloatArray = -(_xlogx(p) + _xlogx(1.0 - p)).sum(axis=-1)
    return out


def least_confidence_scores(probs: FloatArray, *, multilabel: bool = False) -> NDArray[np.float64]:
    """1 - the top class probability; multi-label: mean over labels of min(p, 1 - p).

    Args:
        probs: (n, C) class probabilities (or per-label probabilities when ``multilabel``).

    Returns:
        (n,) float64, higher = less confident.
    """
    if multilabel:
        return rowwise(lambda p: np.minimum(p, 1.0 - p).mean(axis=1), probs)
    return rowwise(lambda p: 1.0 - p.max(axis=1, initial=0.0), probs)


def margin_scores(probs: FloatArray, *, multilabel: bool = False) -> NDArray[np.float64]:
    """1 - (top1 - top2) probability; multi-label: 1 - min over labels of |2p - 1|.

    Args:
        probs: (n, C) class probabilities (or per-label probabilities when ``multilabel``).

    Returns:
        (n,) float64 in [0, 1], higher = smaller margin.
    """
    if multilabel:
        return rowwise(lambda p: 1.0 - np.abs(2.0 * p - 1.0).min(axis=1, initial=1.0), probs)
    if probs.shape[1] < 2:
        return np.ones(probs.shape[0])
    bits = float_bits(probs)
    return compiled_rowwise(kernels.margin, bits, bits.dtype.type(0))


def entropy_scores(probs: FloatArray, *, multilabel: bool = False) -> NDArray[np.float64]:
    """Shannon entropy in nats; multi-label: sum of per-label binary entropies.

    Args:
        probs: (n, C) class probabilities (or per-label probabilities when ``multilabel``).

    Returns:
        (n,) float64 >= 0, higher = more uncertain.
    """
    return rowwise(_binary_entropy_rows if multilabel else _entropy_rows, probs)


def _bald_multiclass(block: FloatArray, scratch: FloatArray) -> FloatArray:
    # MI = H(mean) - mean_m H(p_m): one log per member probability and one per mean probability;
    # einsum sums p * log p over members and classes in one pass, with no (M, n, C) product.
    n_members = block.shape[0]
    mean = np.sum(block, axis=0, out=scratch[n_members])
    mean *= 1.0 / n_members
    member_xlogx = xlogy_sum("mrc,mrc->r", block, block, scratch[:n_members]) / n_members
    mean_xlogx = xlogy_sum("rc,rc->r", mean, mean, scratch[n_members + 1])
    return np.maximum(member_xlogx - mean_xlogx, 0.0)


def _bald_multilabel(block: FloatArray, scratch: FloatArray) -> FloatArray:
    mean_entropy = _binary_entropy_rows(block.mean(axis=0))
    out: FloatArray = np.maximum(mean_entropy - _binary_entropy_rows(block).mean(axis=0), 0.0)
    return out


def bald_scores(committee: FloatArray, *, multilabel: bool = False) -> NDArray[np.float64]:
    """BALD mutual information: H(mean of members) - mean of member entropies.

    Computed in the committee's dtype: float32 committees in one compiled pass
    (:func:`strategies.kernels.bald32`), float64 ones in numpy chunks.

    Args:
        committee: (M, n, C) member probabilities (bootstrap members or MC-dropout samples).

    Returns:
        (n,) float64 >= 0 (clipped), higher = members disagree more.
    """
    if not multilabel and fast_committee(committee):
        return compiled_rowwise(kernels.bald32, committee)
    return committee_rowwise(_bald_multilabel if multilabel else _bald_multiclass, committee)


LEAST_CONFIDENCE = Signal(
    "least_confidence", "label", least_confidence_scores, "1 - top class probability"
)
MARGIN = Signal("margin", "label", margin_scores, "small gap between the two most likely classes")
ENTROPY = Signal("entropy", "label", entropy_scores, "predictive entropy")
BALD = Signal(
    "bald",
    "label",
    bald_scores,
    "mutual information between prediction and committee member (BALD)",
)
