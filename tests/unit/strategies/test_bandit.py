"""The adaptive selection on planted pools: it pays the arm that helps, and falls back to random.

The arms are planted as orders: a *helpful* arm takes first the items a model fit on the labels so
far gets wrong (an oracle of its errors), a *useless* one takes the nearest neighbours of an item
already labeled (near-duplicates, which teach nothing new). Each cycle the
bandit allocates a batch, the planted annotator labels it with the true classes, and
:func:`strategies.bandit.judge_pending` judges the arms on the audit items, exactly as a cycle does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from strategies import Pool
from strategies.audit import audit_slots, draw_audit
from strategies.bandit import (
    AUDIT,
    EXPLORE,
    PROXY_DIMS,
    RANDOM_FLOOR,
    Reward,
    allocate,
    arm_orders,
    arm_rewards,
    build_queue,
    interleave,
    judge_pending,
    judge_push,
    proxy_features,
)
from strategies.coverage import SEED_SAMPLE

BATCH = 50

Orders = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]


def _blobs(seed: int, n: int = 1200) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping classes in 6 dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, 6))
    x[np.arange(n), y] += 3.5
    return x, y


def _loop(
    x: np.ndarray, y: np.ndarray, planted: Orders, *, cycles: int, seed: int, batch: int = BATCH
) -> list[Mapping[str, float]]:
    """Run the bandit for ``cycles`` pushes of ``batch`` labels, every pick pooled until judged
    (:func:`strategies.bandit.judge_pending`, as a cycle does); returns the shares of each cycle."""
    rng = np.random.default_rng(seed)
    labels = np.full(y.shape[0], -1)
    start = rng.choice(y.shape[0], 10, replace=False)  # a first random batch
    labels[start] = y[start]
    proxy = proxy_features(x, rng=rng)
    rewards: list[Reward] = []
    audit_rows: list[int] = []
    pending: dict[str, list[int]] = {}
    history = []
    for cycle in range(cycles):
        unlabeled = np.flatnonzero(labels < 0)
        orders = {"random": rng.permutation(unlabeled), **planted(labels, rng)}
        allocation = allocate(rewards, list(orders), rng=rng)
        history.append(allocation.shares)
        slots = audit_slots(batch, batch, 0.1)
        audit = draw_audit(unlabeled, int(slots.sum()), rng=rng)
        built = interleave(orders, allocation.shares, audit, slots)
        labels[built.order[:batch]] = y[built.order[:batch]]
        for row, arm in zip(built.order[:batch], built.arms[:batch], strict=True):
            pending.setdefault(arm, []).append(int(row))
            if arm == AUDIT:
                audit_rows.append(int(row))
        filed, consumed = judge_pending(
            proxy, labels, pending, np.asarray(audit_rows), cycle=cycle, n_classes=3
        )
        rewards += filed
        for arm in consumed:
            pending.pop(arm, None)
    return history


def _right(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n,) 1 where a model fit on the labels so far predicts the true class, else 0."""
    known = labels >= 0
    if np.unique(labels[known]).shape[0] < 2:
        return np.zeros(len(y))
    model = LogisticRegression(max_iter=200).fit(x[known], labels[known])
    return (model.predict(x) == y).astype(float)


def _duplicates(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unlabeled items, nearest to the first labeled item first."""
    anchor = x[np.flatnonzero(labels >= 0)[0]]
    return _remaining(labels, np.linalg.norm(x - anchor, axis=1))


def _remaining(labels: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Unlabeled items, ascending ``key``."""
    unlabeled = np.flatnonzero(labels < 0)
    return unlabeled[np.argsort(key[unlabeled], kind="stable")]


def test_the_bandit_shifts_the_batch_to_the_helpful_arm() -> None:
    late = []
    for seed in range(4):
        x, y = _blobs(seed)

        def planted(
            labels: np.ndarray, rng: np.random.Generator, x: np.ndarray = x, y: np.ndarray = y
        ) -> dict[str, np.ndarray]:
            return {
                "helpful": _remaining(labels, _right(x, y, labels) + rng.random(len(y))),
                "useless": _duplicates(x, labels),
            }

        history = _loop(x, y, planted, cycles=6, seed=seed)
        assert history[0]["helpful"] == pytest.approx(history[0]["useless"], abs=0.15)
        late += history[2:]  # from the third cycle on
    helpful = np.mean([s["helpful"] for s in late])
    useless = np.mean([s["useless"] for s in late])
    assert helpful > 0.4 and helpful > 2 * useless, (helpful, useless)


def test_when_every_arm_is_useless_the_batch_drifts_to_random() -> None:
    first, last = [], []
    for seed in range(4):
        x, y = _blobs(seed)

        def planted(
            labels: np.ndarray, rng: np.random.Generator, x: np.ndarray = x, y: np.ndarray = y
        ) -> dict[str, np.ndarray]:
            return {
                "duplicates": _duplicates(x, labels),
                "one_class": _remaining(labels, (y != 0) + rng.random(len(y))),  # class 0 only
            }

        history = _loop(x, y, planted, cycles=8, seed=seed)
        first.append(history[0]["random"])
        last.append(history[-1]["random"])
    assert np.mean(first) < 0.35
    assert np.mean(last) > np.mean(first) + 0.15, (first, last)


def test_without_evidence_the_combination_keeps_the_batch_and_the_others_scout() -> None:
    arms = ["random", "margin", "typiclust", "combined"]
    allocation = allocate([], arms, rng=np.random.default_rng(0))
    shares = allocation.shares
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["combined"] == pytest.approx(1.0 - EXPLORE)  # the incumbent
    # The challengers share the scouting part; random's reference is the push's audit items.
    assert shares["margin"] + shares["typiclust"] == pytest.approx(EXPLORE)
    assert min(shares["margin"], shares["typiclust"]) > 0.3 * EXPLORE
    assert shares["random"] == RANDOM_FLOOR == 0.0
    assert not any(b.trusted for b in allocation.beliefs)


def test_an_arm_that_keeps_winning_is_trusted_and_says_why() -> None:
    rewards = [Reward(c, "margin", 1.0, 0.01, 5) for c in range(8)]
    rewards += [Reward(c, "entropy", 0.0, -0.01, 5) for c in range(8)]
    allocation = allocate(rewards, ["random", "margin", "entropy"], rng=np.random.default_rng(0))
    beliefs = {b.arm: b for b in allocation.beliefs}
    assert beliefs["margin"].trusted and not beliefs["entropy"].trusted
    assert "trusted" in beliefs["margin"].reason and "won" in beliefs["margin"].reason
    assert allocation.shares["margin"] > 0.8
    assert allocation.shares["entropy"] < 0.02


def test_interleave_spreads_audit_and_arms_over_every_batch() -> None:
    orders = {"random": np.arange(100)[::-1], "margin": np.arange(100)}
    audit = np.array([50, 51, 52, 53, 54, 55])
    built = interleave(orders, {"random": 0.5, "margin": 0.5}, audit, audit_slots(60, 20, 0.1))
    assert sorted(built.order.tolist()) == list(range(100))  # a permutation of the pool
    for start in range(0, 60, 20):
        arms = built.arms[start : start + 20]
        assert arms.count(AUDIT) == 2 and arms.count("margin") == 9 and arms.count("random") == 9
    assert set(built.order[: len(built.arms)][np.asarray(built.arms) == AUDIT]) == set(audit)
    assert built.order[1] == 0  # margin's best item comes early (slots alternate)


def test_a_pool_smaller_than_a_batch_records_its_audit_items() -> None:
    """18 unlabeled items and batches of 100: two audit slots, both recorded as audit, and the
    queue is still the whole pool once."""
    x, y = _blobs(0, n=30)
    labels = np.full(30, -1)
    labels[:12] = y[:12]
    pool = Pool(labels=labels, probs=np.full((30, 3), 1 / 3), embeddings=x)
    built, _ = build_queue(
        pool, np.arange(12, 30), [], rng=np.random.default_rng(0), batch_size=100,
        audit_share=0.1, adaptive=True,
    )  # fmt: skip
    assert sorted(built.order.tolist()) == list(range(12, 30))
    assert len(built.arms) == 18 and built.arms.count(AUDIT) == 2


def test_build_queue_fixed_is_the_combination_with_the_audit_share() -> None:
    x, y = _blobs(0, n=200)
    labels = np.full(200, -1)
    labels[:10] = y[:10]
    probs = np.full((200, 3), 1 / 3)
    pool = Pool(labels=labels, probs=probs, embeddings=x)
    combined = np.arange(10, 200)
    built, allocation = build_queue(
        pool, combined, [], rng=np.random.default_rng(0), batch_size=20, audit_share=0.1,
        adaptive=False,
    )  # fmt: skip
    assert allocation.shares == {"combined": 1.0}
    assert built.arms[:20].count(AUDIT) == 2
    rest = [i for i, a in zip(built.order, built.arms, strict=False) if a == "combined"]
    assert rest[:5] == [10, 11, 12, 13, 14]
    orders = arm_orders(pool, combined, rng=np.random.default_rng(0), batch_size=20)
    assert set(orders) == {"random", "margin", "entropy", "typiclust", "combined"}
    cold = Pool(labels=labels, embeddings=x)
    assert set(arm_orders(cold, combined, rng=np.random.default_rng(0), batch_size=20)) == {
        "random",
        "combined",
    }


def _coin_flips(arms: list[str], cycles: int, seed: int) -> list[Reward]:
    """Every arm wins half its comparisons with random, and with each other (gains at random)."""
    rng = np.random.default_rng(seed)
    return [
        Reward(c, arm, float(rng.random() < 0.5), float(rng.normal(0, 0.01)), 1)
        for c in range(cycles)
        for arm in arms
    ]


def test_evidence_that_tells_no_arm_apart_leaves_the_batch_with_the_incumbent() -> None:
    """Coin-flip evidence: the challengers keep their scouting share and the configured
    combination the rest (random, at times trusted by chance, takes it in a few draws of the
    evidence), instead of a split as even as the noise (what the same evidence gets without an
    incumbent)."""
    challengers = ["margin", "entropy", "typiclust"]
    kept, spread = [], []
    for seed in range(10):
        rewards = _coin_flips([*challengers, "combined"], 30, seed)
        rng = np.random.default_rng(seed)
        shares = allocate(rewards, ["random", *challengers, "combined"], rng=rng).shares
        assert sum(shares.values()) == pytest.approx(1.0)
        assert sum(shares[a] for a in challengers) == pytest.approx(EXPLORE)
        kept.append(shares["combined"])
        even = allocate(rewards, ["random", *challengers], rng=rng).shares
        spread.append(max(even[a] for a in challengers))
    assert sum(k == pytest.approx(1.0 - EXPLORE) for k in kept) >= 8, kept
    assert np.mean(spread) < 0.6, spread


def test_a_challenger_trusted_to_beat_the_incumbent_competes_for_the_batch() -> None:
    """Margin's labels beat the combination's in six cycles of seven: it is trusted over it and
    takes most of the batch; entropy, untrusted, keeps the scouting share."""
    rewards = []
    for c in range(7):
        rewards += [Reward(c, "combined", 0.5, 0.01, 5), Reward(c, "entropy", 0.5, 0.01, 5)]
        rewards.append(Reward(c, "margin", 1.0, 0.02 if c != 3 else 0.0, 5))
    shares = allocate(
        rewards, ["random", "margin", "entropy", "combined"], rng=np.random.default_rng(0)
    ).shares
    assert shares["margin"] > 0.6 and shares["margin"] > 2 * shares["combined"], shares
    assert shares["entropy"] == pytest.approx(EXPLORE)


def test_random_takes_over_once_it_is_trusted_to_beat_the_incumbent() -> None:
    rewards = [Reward(c, "combined", 0.0, -0.01, 5) for c in range(10)]
    rewards += [Reward(c, "margin", 0.0, -0.02, 5) for c in range(10)]
    shares = allocate(rewards, ["random", "margin", "combined"], rng=np.random.default_rng(0))
    assert shares.shares["random"] == pytest.approx(1.0 - EXPLORE)  # margin keeps scouting
    assert shares.shares["combined"] == 0.0
    beliefs = {b.arm: b for b in shares.beliefs}
    assert not beliefs["combined"].trusted


def test_without_random_picks_the_push_audit_items_are_random_reference() -> None:
    """No random pick in the push: its own audit items are judged as random's labels, on the
    earlier audit items only (never trained and scored on the same item)."""
    x, y = _blobs(1, n=300)
    labels = y.copy()
    proxy = proxy_features(x, rng=np.random.default_rng(0))
    picked = {"margin": np.arange(20, 26), "combined": np.arange(26, 32)}
    earlier, fresh = np.arange(100, 130), np.arange(130, 136)
    audit = np.concatenate((earlier, fresh))
    assert judge_push(proxy, labels, picked, audit, cycle=3, n_classes=3) == []
    rewards = judge_push(proxy, labels, picked, audit, cycle=3, n_classes=3, fresh=fresh)
    base = np.setdiff1d(np.arange(300), np.concatenate((audit, np.arange(20, 32))))
    expected = arm_rewards(
        proxy, labels, base, {**picked, "random": fresh}, earlier, cycle=3, n_classes=3
    )
    assert rewards == expected and {r.arm for r in rewards} == {"margin", "combined"}
    own = {**picked, "random": np.arange(40, 46)}  # random's own picks come first
    assert judge_push(proxy, labels, own, audit, cycle=3, n_classes=3, fresh=fresh) == judge_push(
        proxy, labels, own, audit, cycle=3, n_classes=3
    )


def test_proxy_features_of_a_large_pool_keep_its_strongest_directions() -> None:
    """Above the PCA sample size the proxy's components are fitted on a sample of the pool: the
    features are still standardized and still follow the directions of largest variance."""
    rng = np.random.default_rng(4)
    n, d = SEED_SAMPLE + 2000, 96
    strong = rng.normal(size=(n, 3)) * np.array([9.0, 6.0, 4.0])  # three planted directions
    basis = np.linalg.qr(rng.normal(size=(d, 3)))[0].T
    x = (strong @ basis + rng.normal(size=(n, d)) * 0.5).astype(np.float32)
    proxy = proxy_features(x, rng=np.random.default_rng(1))
    assert proxy.shape == (n, PROXY_DIMS) and proxy.dtype == np.float64
    np.testing.assert_allclose(proxy.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(proxy.std(axis=0), 1.0, atol=1e-6)
    for k in range(3):  # the first components are the planted directions, in order
        assert abs(np.corrcoef(proxy[:, k], strong[:, k])[0, 1]) > 0.99
    np.testing.assert_array_equal(proxy, proxy_features(x, rng=np.random.default_rng(1)))


def test_judge_pending_waits_for_enough_labels_and_prefers_random_own_picks() -> None:
    x, y = _blobs(0, n=300)
    labels = y.copy()
    proxy = proxy_features(x, rng=np.random.default_rng(0))
    audit = np.arange(0, 20)
    few = {"margin": [30, 31, 32, 33], "random": [40, 41, 42, 43, 44], AUDIT: [0, 1, 2, 3, 4]}
    assert judge_pending(proxy, labels, few, audit, cycle=4, n_classes=3) == ([], frozenset())
    ready = {**few, "margin": [30, 31, 32, 33, 34, 35, 36]}
    rewards, consumed = judge_pending(proxy, labels, ready, audit, cycle=4, n_classes=3)
    # Random's 5 own picks are the reference; the arms are compared on 5 labels each.
    (reward,) = rewards
    assert (reward.arm, reward.n, reward.cycle) == ("margin", 5, 4)
    assert consumed == {"margin", "random", AUDIT}
    assert rewards == judge_push(
        proxy,
        labels,
        {"margin": np.arange(30, 37), "random": np.arange(40, 45)},
        audit,
        cycle=4,
        n_classes=3,
    )
    # Without random's own picks the 5 waiting audit items stand in, judged on the other 15.
    alone = {"margin": ready["margin"], AUDIT: [0, 1, 2, 3, 4]}
    rewards, consumed = judge_pending(proxy, labels, alone, audit, cycle=5, n_classes=3)
    assert [r.n for r in rewards] == [5] and consumed == {"margin", AUDIT}
    # Every labeled audit item waiting (the first judgment): they only become the judged-on set.
    first = {"margin": ready["margin"], AUDIT: list(range(20))}
    assert judge_pending(proxy, labels, first, audit, cycle=6, n_classes=3) == (
        [],
        frozenset({AUDIT}),
    )
