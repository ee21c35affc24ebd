"""The cold start on a generated set whose strongest visual factor is not the class.

In raw pixels the nuisance set (:mod:`backend.simulate.sets`) clusters by background; the most
typical item of each cluster is then mostly one class. The cold start must still cover the
classes as well as random order does at 20 labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from backend.simulate.sets import nuisance_set, pixel_features, rare_set
from strategies.coldstart import cold_start_order, typicality_scores
from strategies.coverage import cluster_embeddings

SEEDS = range(6)


@pytest.fixture(scope="module")
def nuisance() -> tuple[np.ndarray, np.ndarray]:
    made = nuisance_set(480, seed=1)
    return pixel_features(made.images, side=12), made.y


def _classes(y: np.ndarray, picks: np.ndarray) -> int:
    return int(np.unique(y[picks]).shape[0])


def test_cold_start_covers_the_classes_like_random(
    nuisance: tuple[np.ndarray, np.ndarray],
) -> None:
    """Classes among the first 5 and the first 20 labels (two batches of 10 and of 5 + 15)."""
    x, y = nuisance
    ours: dict[int, list[int]] = {5: [], 20: []}
    rand: dict[int, list[int]] = {5: [], 20: []}
    most_typical = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        labeled = np.zeros(len(y), dtype=bool)
        first = cold_start_order(x, labeled, batch_size=5, rng=rng)[:5]
        labeled[first] = True
        second = cold_start_order(x, labeled, batch_size=15, rng=rng)[:15]
        ours[5].append(_classes(y, first))
        ours[20].append(_classes(y, np.concatenate((first, second))))
        drawn = rng.choice(len(y), 20, replace=False)
        rand[5].append(_classes(y, drawn[:5]))
        rand[20].append(_classes(y, drawn))
        clusters = cluster_embeddings(x, n_clusters=5, rng=rng)
        typical = typicality_scores(x)
        best = [
            int(np.flatnonzero(clusters.labels == c)[np.argmax(typical[clusters.labels == c])])
            for c in range(5)
        ]
        most_typical.append(_classes(y, np.array(best)))
    for n in (5, 20):
        assert np.mean(ours[n]) >= np.mean(rand[n]) - 0.2, (n, ours, rand)
    # plain TypiClust (the most typical item of each cluster) is no better here
    assert np.mean(most_typical) <= np.mean(rand[5]) + 0.2, (most_typical, rand)


def test_generated_sets_have_the_planted_structure() -> None:
    made = rare_set(500, seed=0)
    counts = np.bincount(made.y)
    assert counts.argmin() == 4 and counts[4] == 20  # the rare class: 4 %
    assert 0.02 < made.nuisance.mean() < 0.12  # the rare style
    assert len(made.images) == 500 and made.images[0][:4] == b"\x89PNG"
    again = rare_set(500, seed=0)
    assert again.images == made.images  # deterministic
    shapes = nuisance_set(40, seed=0)
    assert set(shapes.y.tolist()) == {0, 1, 2, 3} and set(shapes.nuisance.tolist()) <= {0, 1, 2, 3}
