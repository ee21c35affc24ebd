"""Selection signals for active learning: pure functions over arrays, one read-only registry.

Every entry is called as ``REGISTRY[name](pool, k, *, rng, **options) -> Selection`` and carries
its metadata (:class:`strategies.base.StrategyInfo`): ``kind`` is "label" (selects only unlabeled
items, for the labeling queue) or "review" (selects only labeled items, for the review queue);
``needs`` names the pool inputs it requires. Combine several with
:func:`strategies.combine.prioritize`.
"""

from __future__ import annotations

from types import MappingProxyType

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
from strategies.base import Kind, Pool, Selection, StrategyInfo

_LABEL: Kind = "label"
_REVIEW: Kind = "review"


def _needs(*names: str) -> frozenset[str]:
    return frozenset(names)


REGISTRY: MappingProxyType[str, StrategyInfo] = MappingProxyType(
    {
        # --- labeling signals: unlabeled items only -------------------------------------------
        "random": StrategyInfo(
            passive.random, passive.random_pool_scores, _LABEL, _needs(), "uniform random"
        ),
        "least_confidence": StrategyInfo(
            uncertainty.least_confidence,
            uncertainty.least_confidence_pool_scores,
            _LABEL,
            _needs("probs"),
            "1 - top class probability",
        ),
        "margin": StrategyInfo(
            uncertainty.margin,
            uncertainty.margin_pool_scores,
            _LABEL,
            _needs("probs"),
            "small gap between the two most likely classes",
        ),
        "entropy": StrategyInfo(
            uncertainty.entropy,
            uncertainty.entropy_pool_scores,
            _LABEL,
            _needs("probs"),
            "predictive entropy",
        ),
        "bald": StrategyInfo(
            uncertainty.bald,
            uncertainty.bald_pool_scores,
            _LABEL,
            _needs("committee"),
            "mutual information between prediction and committee member (BALD)",
        ),
        "vote_entropy": StrategyInfo(
            disagreement.vote_entropy,
            disagreement.vote_entropy_pool_scores,
            _LABEL,
            _needs("committee"),
            "entropy of committee members' hard votes",
            multilabel=False,
        ),
        "kl_consensus": StrategyInfo(
            disagreement.kl_consensus,
            disagreement.kl_consensus_pool_scores,
            _LABEL,
            _needs("committee"),
            "largest KL divergence of a member from the committee consensus",
            multilabel=False,
        ),
        "coverage": StrategyInfo(
            coverage.coverage,
            coverage.coverage_pool_scores,
            _LABEL,
            _needs("clusters"),
            "item's cluster has few labels for its size",
        ),
        "coreset": StrategyInfo(
            coverage.coreset,
            coverage.coreset_pool_scores,
            _LABEL,
            _needs("embeddings"),
            "far from every labeled item (greedy k-center)",
        ),
        "typicality": StrategyInfo(
            coldstart.typicality,
            coldstart.typicality_pool_scores,
            _LABEL,
            _needs("embeddings"),
            "dense neighbourhood (inverse mean k-NN distance)",
        ),
        "cold_start": StrategyInfo(
            coldstart.cold_start,
            coldstart.cold_start_pool_scores,
            _LABEL,
            _needs("embeddings"),
            "TypiClust-style: typical items of the largest uncovered clusters",
        ),
        "balance": StrategyInfo(
            balance.balance,
            balance.balance_pool_scores,
            _LABEL,
            _needs("probs"),
            "predicted to be in a class rare among the labels",
        ),
        "slice": StrategyInfo(
            slices.slice_,
            slices.slice_pool_scores,
            _LABEL,
            _needs("oos_probs", "slices"),
            "item's slice (a task data group) has a high out-of-sample error rate",
            multilabel=False,
        ),
        # --- review signals: labeled items only -----------------------------------------------
        "suspicion": StrategyInfo(
            label_quality.suspicion,
            label_quality.suspicion_pool_scores,
            _REVIEW,
            _needs("oos_probs"),
            "calibrated probability the label is wrong (out-of-sample model + labeled neighbours), "
            "above 0.5 only where flagged with evidence (multi-label: per tag)",
            alarm=0.5,
        ),
        "self_confidence": StrategyInfo(
            disagreement.self_confidence,
            disagreement.self_confidence_pool_scores,
            _REVIEW,
            _needs("oos_probs"),
            "out-of-sample probability of the given label (multi-label: of some label's) is low",
            alarm=0.5,
        ),
        "normalized_margin": StrategyInfo(
            disagreement.normalized_margin,
            disagreement.normalized_margin_pool_scores,
            _REVIEW,
            _needs("oos_probs"),
            "another class beats the given label",
            multilabel=False,
            alarm=0.5,
        ),
        "confident_learning": StrategyInfo(
            disagreement.confident_learning,
            disagreement.confident_learning_pool_scores,
            _REVIEW,
            _needs("oos_probs"),
            "confident learning: confidently predicted as another class (per-class thresholds; "
            "multi-label: one-vs-rest per label)",
            alarm=1.0,
        ),
        "annotator_disagreement": StrategyInfo(
            disagreement.annotator_disagreement,
            disagreement.annotator_pool_scores,
            _REVIEW,
            _needs("annotations"),
            "annotators chose different classes",
            multilabel=False,
            alarm=0.0,
        ),
        "annotator_model_disagreement": StrategyInfo(
            disagreement.annotator_model_disagreement,
            disagreement.annotator_model_pool_scores,
            _REVIEW,
            _needs("annotations", "oos_probs"),
            "annotators and the model (as one more voter) disagree",
            multilabel=False,
            alarm=0.5,
        ),
    }
)

__all__ = ["REGISTRY", "Pool", "Selection", "StrategyInfo"]
