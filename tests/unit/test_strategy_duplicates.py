"""Planted answers: near-copies of labeled items are found and queued behind novel items."""

from __future__ import annotations

import dataclasses

import numpy as np

from strategies import Pool
from strategies.combine import prioritize
from strategies.duplicates import demote, demote_copies, near_copies_of_labeled


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


def test_searching_only_the_head_finds_the_same_copies_there() -> None:
    rng = np.random.default_rng(2)
    n = 400
    x = rng.normal(size=(n, 24))
    labels = np.where(np.arange(n) < 40, np.arange(n) % 4, -1)
    for copy, original in ((200, 5), (201, 6), (300, 7)):
        x[copy] = x[original] + 0.02 * rng.normal(size=24)
    pool = Pool(labels=labels, probs=rng.dirichlet(np.ones(4), n), embeddings=x)
    priority = prioritize(pool, {"margin": 1.0}, rng=np.random.default_rng(0), batch_size=10)
    labeled = labels >= 0
    everywhere = near_copies_of_labeled(x, labeled, threshold=0.95)
    assert set(np.flatnonzero(everywhere).tolist()) == {200, 201, 300}
    head = 60
    among = priority.order[:head]
    found = near_copies_of_labeled(x, labeled, threshold=0.95, among=among)
    assert np.array_equal(found, everywhere & np.isin(np.arange(n), among))
    mean = Pool(labels=np.full(n, -1), embeddings=x).embedding_mean  # as the cycle passes it
    assert np.array_equal(
        near_copies_of_labeled(x, labeled, threshold=0.95, among=among, mean=mean), found
    )
    # Put one copy at the front and one behind the head: only the first is moved back.
    order = priority.order.tolist()
    for item in (200, 201, 300):
        order.remove(item)
    order = [200, *order[: head + 10], 300, *order[head + 10 :], 201]
    positions = np.full(n, np.nan)
    positions[order] = np.arange(len(order), dtype=np.float64)
    planted = dataclasses.replace(priority, order=np.asarray(order), priority=positions)
    demoted = demote_copies(planted, x, labeled, threshold=0.95, head=head)
    assert int(demoted.order[-1]) == 200
    assert demoted.order.tolist().index(300) == head + 10
    whole = demote_copies(planted, x, labeled, threshold=0.95)
    assert set(whole.order[-3:].tolist()) == {200, 201, 300}
