"""Clusters reused across cycles: kept while the pool barely changes, refit when it does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.loop.clusters import project_clusters
from tests.conftest import make_settings


def _blobs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(6, 40))
    return (centres[np.arange(n) % 6] + rng.normal(size=(n, 40))).astype(np.float32)


def test_clusters_are_reused_new_tasks_assigned_and_refit_after_much_change(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, strategy={"n_clusters": 6})
    x = _blobs(300)
    ids = np.arange(1000, 1300, dtype=np.int64)
    found = project_clusters(settings, 3, ids, x)
    first = found.labels
    assert not found.reused and first.shape == (300,)
    assert found.basis is None  # 40 dimensions: nothing to reduce
    again = project_clusters(settings, 3, ids, x)
    assert again.reused and np.array_equal(again.labels, first)

    # 20 new tasks (under a tenth of the pool): old ones keep their cluster, new ones go to the
    # cluster their blob-mates are in.
    extra = _blobs(320)[300:]
    ids2 = np.concatenate((ids, np.arange(2000, 2020, dtype=np.int64)))
    grown_found = project_clusters(settings, 3, ids2, np.concatenate((x, extra)))
    grown = grown_found.labels
    assert grown_found.reused and np.array_equal(grown[:300], first)
    mates = {b: first[np.arange(300) % 6 == b][0] for b in range(6)}
    assert [int(c) for c in grown[300:]] == [int(mates[i % 6]) for i in range(300, 320)]

    # A re-embedded pool (e.g. a fine-tuned backbone) is refit, not patched.
    assert not project_clusters(settings, 3, ids2, np.concatenate((x, extra)) * 2.0).reused
    assert project_clusters(settings, 3, ids2, np.concatenate((x, extra)) * 2.0).reused


def test_the_principal_directions_are_stored_with_the_clusters_and_refit_with_them(
    tmp_path: Path,
) -> None:
    """Embeddings wider than the directions kept: the pool's principal directions come with the
    clusters, are carried over unchanged while the clusters are, span the pool's own spread, and
    are fitted again when the pool is re-embedded."""
    settings = make_settings(tmp_path, strategy={"n_clusters": 6})
    rng = np.random.default_rng(4)
    spread = rng.normal(size=(6, 300)) * np.array([30, 20, 10, 8, 6, 5])[:, None]
    x = (rng.normal(size=(400, 6)) @ spread + rng.normal(size=(400, 300))).astype(np.float32)
    ids = np.arange(1, 401, dtype=np.int64)
    first = project_clusters(settings, 5, ids, x)
    assert first.basis is not None and first.basis.dim == 300 and first.basis.dims == 128
    # The six planted directions lie in the first six components (their projection keeps >= 99%).
    q, _ = np.linalg.qr(spread.T)
    kept = np.linalg.norm(first.basis.components[:6] @ q, axis=0)
    assert kept.min() >= 0.99, kept
    again = project_clusters(settings, 5, ids, x)
    assert again.reused and again.basis is not None
    np.testing.assert_array_equal(again.basis.components, first.basis.components)
    refit = project_clusters(settings, 5, ids, x * 3.0)
    assert not refit.reused and refit.basis is not None
    np.testing.assert_allclose(refit.basis.mean, first.basis.mean * 3.0, rtol=1e-4, atol=1e-3)


def test_a_stored_clustering_without_directions_gets_them_without_a_refit(tmp_path: Path) -> None:
    """A clustering stored before directions were kept is still reused; the directions are
    fitted once and stored beside it."""
    settings = make_settings(tmp_path, strategy={"n_clusters": 4})
    x = np.random.default_rng(5).normal(size=(300, 200)).astype(np.float32)
    ids = np.arange(1, 301, dtype=np.int64)
    first = project_clusters(settings, 2, ids, x)
    path = settings.store.data_dir / "clusters" / "p2.npz"
    with np.load(path) as data:
        old = {k: data[k] for k in data.files if not k.startswith("basis_")}
    np.savez(path, **old)
    again = project_clusters(settings, 2, ids, x)
    assert again.reused and np.array_equal(again.labels, first.labels)
    assert again.basis is not None and again.basis.dims == 128
    with np.load(path) as data:
        assert "basis_components" in data.files
