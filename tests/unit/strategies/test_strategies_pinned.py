"""Every signal's scores on two small fixed pools, pinned to six decimals, and its metadata.

The values were computed by the registry as it stood before the signals were defined once each
(kernel plus declared kind), so a change in how a signal is wired to the pool shows here as a
changed score, and a changed kind, need or multi-label support as changed metadata. Suspicion's
scores are left out: its noise model is tuned by its own tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from strategies import REGISTRY, Pool

PROBS = np.array(
    [[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33], [0.05, 0.9, 0.05],
     [0.5, 0.5, 0.0]]
)  # fmt: skip
POOL = Pool(
    labels=np.array([0, 0, -1, -1, 2, -1]),
    probs=PROBS,
    committee=np.stack([PROBS, PROBS[::-1], np.roll(PROBS, 1, axis=1)]),
    oos_probs=PROBS[[0, 4, 2, 3, 1, 5]],
    embeddings=np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.5, 0.5], [-1.0, 1.0]]),
    annotations=np.array([[0, 1], [0, 0], [-1, -1], [-1, -1], [2, 0], [-1, -1]]),
    clusters=np.array([0, 0, 1, 1, 1, 2]),
    slices=np.array([0, 0, 0, 1, 1, -1]),
)
TAGS = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4], [0.3, 0.95]])
MULTILABEL = Pool(
    labels=np.array([0, 0, 0, -1]),
    probs=TAGS,
    oos_probs=TAGS,
    targets=np.array([[1, 0], [0, 1], [0, 1], [0, 0]]),
    multilabel=True,
)

PINNED = {
    "annotator_disagreement": [0.693147, 0.0, 0.0, 0.0, 0.693147, 0.0],
    "annotator_model_disagreement": [0.801747, 0.689625, 0.0, 0.0, 0.971095, 0.0],
    "balance": [0.966667, 1.216667, 1.066667, 1.216667, 1.883333, 1.333333],
    "bald": [0.182703, 0.147929, 0.244793, 0.103255, 0.404409, 0.325549],
    "cold_start": [-7.0, -7.0, 0.142857, 0.142857, -7.0, 0.142857],
    "confident_learning": [0.25, 0.925, 0.0, 0.0, 1.575, 0.0],
    "coreset": [0.0, 0.0, 1.581139, 3.535534, 0.0, 1.414214],
    "coverage": [0.666667, 0.666667, 1.5, 1.5, 1.5, 1.0],
    "entropy": [0.801819, 1.080528, 0.639032, 1.098513, 0.394398, 0.693147],
    "kl_consensus": [0.275821, 0.29289, 0.335946, 0.209104, 0.561664, 0.569717],
    "least_confidence": [0.3, 0.6, 0.2, 0.66, 0.1, 0.5],
    "margin": [0.5, 0.95, 0.3, 0.99, 0.15, 1.0],
    "normalized_margin": [0.25, 0.925, 0.0, 0.0, 0.575, 0.0],
    "random": [0.636962, 0.269787, 0.040974, 0.016528, 0.81327, 0.912756],
    "self_confidence": [0.3, 0.95, 0.0, 0.0, 0.75, 0.0],
    "slice": [0.619048, 0.619048, 0.619048, 0.722222, 0.722222, 0.666667],
    "typicality": [0.533962, 0.510997, 0.481061, 0.262907, 0.616369, 0.44973],
    "vote_entropy": [0.636514, 0.636514, 0.636514, 1.098612, 1.098612, 0.636514],
}
PINNED_MULTILABEL = {
    "balance": [1.0, 1.375, 0.583333, 1.4375],
    "confident_learning": [0.2, 0.6, 0.6, 0.0],
    "entropy": [0.825485, 1.283876, 0.998095, 0.80938],
    "least_confidence": [0.15, 0.35, 0.25, 0.175],
    "margin": [0.4, 0.8, 0.8, 0.6],
    "random": [0.636962, 0.269787, 0.040974, 0.016528],
    "self_confidence": [0.2, 0.6, 0.6, 0.0],
}


#: name -> (kind, needs, defined on multi-label pools, alarm), as the registry stated them.
METADATA = {
    "annotator_disagreement": ("review", ("annotations",), False, 0.0),
    "annotator_model_disagreement": ("review", ("annotations", "oos_probs"), False, 0.5),
    "balance": ("label", ("probs",), True, None),
    "bald": ("label", ("committee",), True, None),
    "cold_start": ("label", ("embeddings",), True, None),
    "confident_learning": ("review", ("oos_probs",), True, 1.0),
    "coreset": ("label", ("embeddings",), True, None),
    "coverage": ("label", ("clusters",), True, None),
    "entropy": ("label", ("probs",), True, None),
    "kl_consensus": ("label", ("committee",), False, None),
    "least_confidence": ("label", ("probs",), True, None),
    "margin": ("label", ("probs",), True, None),
    "normalized_margin": ("review", ("oos_probs",), False, 0.5),
    "random": ("label", (), True, None),
    "self_confidence": ("review", ("oos_probs",), True, 0.5),
    "slice": ("label", ("oos_probs", "slices"), False, None),
    "suspicion": ("review", ("oos_probs",), True, 0.5),
    "typicality": ("label", ("embeddings",), True, None),
    "vote_entropy": ("label", ("committee",), False, None),
}


def test_metadata_is_pinned() -> None:
    found = {
        name: (info.kind, tuple(sorted(info.needs)), info.multilabel, info.alarm)
        for name, info in REGISTRY.items()
    }
    assert found == METADATA


@pytest.mark.parametrize("name", sorted(PINNED))
def test_scores_are_pinned(name: str) -> None:
    scores = REGISTRY[name].score(POOL, rng=np.random.default_rng(0))
    assert scores.tolist() == pytest.approx(PINNED[name], abs=1e-6)


@pytest.mark.parametrize("name", sorted(PINNED_MULTILABEL))
def test_multilabel_scores_are_pinned(name: str) -> None:
    scores = REGISTRY[name].score(MULTILABEL, rng=np.random.default_rng(0))
    assert scores.tolist() == pytest.approx(PINNED_MULTILABEL[name], abs=1e-6)


def test_every_signal_but_suspicion_is_pinned() -> None:
    assert set(PINNED) == set(REGISTRY) - {"suspicion"}
    available = {name for name in REGISTRY if REGISTRY[name].unavailable(MULTILABEL) is None}
    assert set(PINNED_MULTILABEL) == available - {"suspicion"}
