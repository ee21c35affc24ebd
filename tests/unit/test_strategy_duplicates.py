"""Planted answers: near-copies of labeled items are found and queued behind novel items."""

from __future__ import annotations

import numpy as np

from strategies import Pool
from strategies.combine import prioritize
from strategies.duplicates import demote, near_copies_of_labeled


def test_only_unlabeled_near_copies_of_labeled_items_are_marked() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 32))
    labeled = np.zeros(200, dtype=bool)
    labeled[:20] = True
    x[150] = x[3] + 0.02 * rng.normal(size=32)  # copy of a labeled item
    x[151] = x[160] + 0.02 * rng.normal(size=32)  # copy of an unlabeled item only
    x[10] = x[170]  # a labeled copy of an unlabeled item: 170 is a copy of labeled 10
    found = near_copies_of_labeled(x, labeled, threshold=0.95)
    assert set(np.flatnonzero(found).tolist()) == {150, 170}
    assert not near_copies_of_labeled(x, np.zeros(200, bool), threshold=0.95).any()


def test_the_queue_serves_every_novel_item_before_a_copy() -> None:
    rng = np.random.default_rng(1)
    n = 120
    x = rng.normal(size=(n, 16))
    labels = np.where(np.arange(n) < 30, np.arange(n) % 3, -1)
    probs = rng.dirichlet(np.ones(3), n)
    pool = Pool(labels=labels, probs=probs, embeddings=x)
    priority = prioritize(pool, {"margin": 1.0}, rng=np.random.default_rng(0), batch_size=10)
    first = int(priority.order[0])  # the item the model wants most
    copies = np.zeros(n, dtype=bool)
    copies[first] = True
    demoted = demote(priority, copies)
    assert int(demoted.order[-1]) == first and len(demoted.order) == len(priority.order)
    assert demoted.order[:-1].tolist() == [r for r in priority.order.tolist() if r != first]
    assert demoted.priority[first] == len(priority.order) - 1
    assert np.array_equal(np.argsort(demoted.priority[demoted.order]), np.arange(n - 30))
    assert demote(priority, np.zeros(n, dtype=bool)) is priority
