"""Large pools take sampled paths in the cold start and the near-copy search; each keeps what the
exact path is for. The thresholds are lowered here so the sampled paths run on small pools."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import Pool, coldstart
from strategies.base import Basis
from strategies.coldstart import cold_start_order, principal_basis, reduce
from strategies.duplicates import centred_unit


def _blobs(sizes: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(len(sizes), 32))
    y = np.repeat(np.arange(len(sizes)), sizes)
    return (centres[y] + rng.normal(size=(len(y), 32))).astype(np.float32), y


@pytest.mark.parametrize("sample", [400, 10**9], ids=["sampled", "exact"])
def test_the_cold_start_reaches_the_uncovered_clusters_first(
    sample: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight equal blobs, two of them holding a label: the first eight picks span more blobs
    than eight random draws do (5.25 expected), whether TypiClust runs on every item or on a
    sample; the order holds every unlabeled item once, the labeled ones never."""
    monkeypatch.setattr(coldstart, "TYPICLUST_SAMPLE", sample)
    x, y = _blobs([250] * 8, seed=0)
    labeled = np.zeros(len(y), dtype=bool)
    labeled[[3, 700]] = True
    spans = []
    for seed in range(5):
        order = cold_start_order(x, labeled, batch_size=4, rng=np.random.default_rng(seed))
        assert np.array_equal(np.sort(order), np.flatnonzero(~labeled))
        spans.append(len(set(y[order[:8]].tolist())))
    assert np.mean(spans) >= 6.5, spans


def test_the_components_fitted_on_a_sample_span_the_pools_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above the sample size the PCA is fitted on a sample and projects every item: the scores
    span what the components of the whole pool give (R^2 of one from the other >= 0.99)."""
    monkeypatch.setattr(coldstart, "SEED_SAMPLE", 300)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(3000, 5)) * [9, 7, 5, 4, 3]) @ rng.normal(size=(5, 80))
    x = (x + rng.normal(size=x.shape)).astype(np.float32)
    sampled = reduce(x, dims=5, rng=rng)
    centred = x - x.mean(axis=0)
    full = centred @ np.linalg.svd(centred, full_matrices=False)[2][:5].T
    design = np.column_stack([sampled, np.ones(len(x))])
    fit = design @ np.linalg.lstsq(design, full, rcond=None)[0]
    r2 = 1 - ((full - fit) ** 2).sum(axis=0) / ((full - full.mean(axis=0)) ** 2).sum(axis=0)
    assert sampled.shape == (3000, 5) and r2.min() >= 0.99, r2


def test_a_shared_basis_is_projected_on_instead_of_fitting_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above the sample size, reduce projects on the pool's basis when it holds enough directions
    (and fits its own otherwise); the cold start order run on it is reproducible and still
    reaches the uncovered blobs first."""
    monkeypatch.setattr(coldstart, "SEED_SAMPLE", 300)
    x, y = _blobs([250] * 8, seed=3)
    wide = np.concatenate([x, np.random.default_rng(4).normal(size=(len(x), 200))], axis=1)
    wide = wide.astype(np.float32)
    basis = principal_basis(wide, dims=64, rng=np.random.default_rng(5))
    assert basis is not None and basis.dims == 64 and basis.dim == 232
    on_basis = reduce(wide, dims=16, rng=np.random.default_rng(0), basis=basis)
    np.testing.assert_allclose(on_basis, basis.project(wide, 16), rtol=1e-6)
    narrow = Basis(basis.mean, basis.components[:8])  # too few directions: fitted here
    own = reduce(wide, dims=16, rng=np.random.default_rng(0), basis=narrow)
    assert own.shape == (2000, 16) and not np.allclose(own[:, 8:], 0)
    labeled = np.zeros(len(y), dtype=bool)
    labeled[[3, 700]] = True
    spans = []
    for seed in range(5):
        order = cold_start_order(
            wide, labeled, batch_size=4, rng=np.random.default_rng(seed), basis=basis
        )
        again = cold_start_order(
            wide, labeled, batch_size=4, rng=np.random.default_rng(seed), basis=basis
        )
        assert np.array_equal(order, again)
        assert np.array_equal(np.sort(order), np.flatnonzero(~labeled))
        spans.append(len(set(y[order[:8]].tolist())))
    assert np.mean(spans) >= 6.5, spans


def test_a_pool_checks_its_basis() -> None:
    """A basis must come with embeddings of its size; with_basis checks it alone."""
    x = np.random.default_rng(0).normal(size=(20, 6))
    basis = Basis(np.zeros(6), np.eye(6)[:3])
    labels = np.full(20, -1)
    assert Pool(labels, embeddings=x, basis=basis).basis is basis
    with pytest.raises(ValueError, match="needs the embeddings"):
        Pool(labels, basis=basis)
    with pytest.raises(ValueError, match="dimensions"):
        Pool(labels, embeddings=x[:, :5], basis=basis)
    with pytest.raises(ValueError, match="dimensions, its mean"):
        Basis(np.zeros(5), np.eye(6)[:3])
    with pytest.raises(ValueError, match="NaN"):
        Basis(np.zeros(6), np.full((3, 6), np.nan))
    assert Pool(labels, embeddings=x).with_basis(basis).basis is basis
    with pytest.raises(ValueError, match="dimensions"):
        Pool(labels, embeddings=x[:, :5]).with_basis(basis)


def test_centred_unit_vectors_are_the_same_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from strategies import duplicates

    x = np.random.default_rng(2).random((50, 12)).astype(np.float32)
    x[7] = x.mean(axis=0)  # centred to zero: stays zero, not NaN
    whole = centred_unit(x)
    monkeypatch.setattr(duplicates, "_BLOCK", 8)
    blocks = centred_unit(x)
    np.testing.assert_allclose(blocks, whole, atol=1e-6)
    centred = x - x.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(blocks, centred / np.maximum(norms, 1e-12), atol=1e-5)
    assert np.isfinite(blocks).all()


def test_kmeans_plusplus_seeds_spread_like_scikit_learns() -> None:
    from sklearn.cluster import kmeans_plusplus

    from strategies.coverage import kmeans_plusplus_rows

    rng = np.random.default_rng(13)
    blobs = rng.normal(scale=20.0, size=(12, 16))
    x = blobs[rng.integers(12, size=3_000)] + rng.normal(size=(3_000, 16))
    ours, theirs = [], []
    for seed in range(5):
        rows = kmeans_plusplus_rows(x, 60, rng=np.random.default_rng(seed))
        assert len(set(rows.tolist())) == 60  # distinct items
        np.testing.assert_array_equal(
            rows, kmeans_plusplus_rows(x, 60, rng=np.random.default_rng(seed))
        )
        if seed == 0:  # 12 seeds land in 12 different blobs
            twelve = kmeans_plusplus_rows(x, 12, rng=np.random.default_rng(seed))
            nearest = ((x[twelve, None, :] - blobs[None]) ** 2).sum(axis=2).argmin(axis=1)
            assert len(set(nearest.tolist())) == 12
        potential = lambda c: ((x[:, None, :] - c[None]) ** 2).sum(axis=2).min(axis=1).sum()  # noqa: E731
        ours.append(potential(x[rows]))
        theirs.append(potential(kmeans_plusplus(x, 60, random_state=seed)[0]))
    assert np.mean(ours) < 1.05 * np.mean(theirs)
    same = kmeans_plusplus_rows(np.ones((50, 4)), 5, rng=np.random.default_rng(0))
    assert same.shape == (5,)  # identical items: any of them, no division by zero
