"""Planted answers: the indexed neighbour search finds exactly the pairs brute force finds."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import neighbours
from strategies.base import Basis
from strategies.coldstart import principal_basis
from strategies.duplicates import centred_unit, near_copies_of_labeled
from strategies.neighbours import brute_force_pairs, unit_pairs


def planted(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Low-rank embeddings with noise (variance concentrated as in CNN features) and near-copies
    at graded similarity, half perturbed along the shared directions, half isotropically, plus
    chains of copies of copies."""
    w = rng.normal(size=(16, d))
    x = rng.normal(size=(n, 16)) @ w * 0.6 + rng.normal(size=(n, d)) + 1.0
    pairs = rng.choice(n, size=(n // 20, 2), replace=False)
    centre = x.mean(axis=0)
    for k, (a, b) in enumerate(pairs.tolist()):
        cos = rng.uniform(0.93, 0.999)
        step = rng.normal(size=d) if k % 2 else rng.normal(size=16) @ w
        step *= np.sqrt(1 / cos**2 - 1) * np.linalg.norm(x[a] - centre) / np.linalg.norm(step)
        x[b] = x[a] + step
    chain = pairs[:10, 1]
    x[(chain + 1) % n] = x[chain] + 0.02 * rng.normal(size=(10, d))
    return x


@pytest.fixture
def indexed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every search through the cells, however small (the exact every-pair path is off)."""
    monkeypatch.setattr(neighbours, "FLAT_MAX_PAIRS", 0)


def as_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("path", ["exact", "indexed"])
def test_all_pairs_equal_brute_force(request: pytest.FixtureRequest, path: str) -> None:
    if path == "indexed":
        request.getfixturevalue("indexed")
    x = centred_unit(planted(3000, 256, np.random.default_rng(0)))
    for threshold in (0.95, 0.97):
        bi, bj, bs = brute_force_pairs(x, x, threshold=threshold, same=True)
        fi, fj, fs = unit_pairs(x, x, threshold=threshold, same=True)
        assert len(bi) > 30
        assert as_set(fi, fj) == as_set(bi, bj)
        assert np.all(fi < fj) and np.all(fs >= threshold)
        assert np.allclose(np.sort(fs), np.sort(bs), atol=1e-5)


def test_queries_against_a_base_equal_brute_force(indexed: None) -> None:
    x = centred_unit(planted(3000, 256, np.random.default_rng(1)))
    queries, base = x[:2000], x[2000:]
    bi, bj, _ = brute_force_pairs(queries, base, threshold=0.95)
    fi, fj, _ = unit_pairs(queries, base, threshold=0.95)
    assert len(bi) > 10 and as_set(fi, fj) == as_set(bi, bj)


def test_near_copies_of_labeled_equal_brute_force(indexed: None) -> None:
    raw = planted(3000, 256, np.random.default_rng(2))
    labeled = np.random.default_rng(3).random(3000) < 0.3
    x = centred_unit(raw)
    rows = np.flatnonzero(~labeled)
    hit, _, _ = brute_force_pairs(x[rows], x[labeled], threshold=0.95)
    expected = np.zeros(3000, dtype=bool)
    expected[rows[hit]] = True
    found = near_copies_of_labeled(raw, labeled, threshold=0.95)
    assert expected.sum() > 20 and np.array_equal(found, expected)


@pytest.mark.parametrize("source", ["pool", "random"])
def test_near_copies_on_given_directions_equal_brute_force(indexed: None, source: str) -> None:
    """Directions handed in (the pool's shared basis, or any orthonormal rows at all) change
    which candidates are checked, never the answer."""
    raw = planted(3000, 256, np.random.default_rng(6))
    labeled = np.random.default_rng(7).random(3000) < 0.3
    if source == "pool":
        basis = principal_basis(raw.astype(np.float32), rng=np.random.default_rng(8))
    else:
        q, _ = np.linalg.qr(np.random.default_rng(9).normal(size=(256, 128)))
        basis = Basis(np.zeros(256, np.float32), q.T.astype(np.float32))
    assert basis is not None
    x = centred_unit(raw)
    rows = np.flatnonzero(~labeled)
    hit, _, _ = brute_force_pairs(x[rows], x[labeled], threshold=0.95)
    expected = np.zeros(3000, dtype=bool)
    expected[rows[hit]] = True
    found = near_copies_of_labeled(raw, labeled, threshold=0.95, basis=basis)
    assert expected.sum() > 20 and np.array_equal(found, expected)


def test_nothing_to_search_gives_no_pairs() -> None:
    empty = np.zeros((0, 8), dtype=np.float32)
    one = centred_unit(np.ones((3, 8)))  # all-zero after centring
    assert all(len(a) == 0 for a in unit_pairs(empty, one, threshold=0.9))
    assert len(unit_pairs(one, one, threshold=0.9, same=True)[0]) == 0
