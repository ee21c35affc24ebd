"""The embedding map's projection: UMAP when it can run (bounded fit, the rest placed beside
their most similar fitted items, the same map every time), PCA otherwise, and which one it was."""

from __future__ import annotations

import numpy as np
import pytest

from backend.diagnosis import projection
from backend.diagnosis.projection import project


def clusters(n: int, rng: np.random.Generator, k: int = 4, d: int = 64) -> tuple[np.ndarray, ...]:
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) + 6.0 * np.eye(k, d)[y] + 2.0  # positive, like pooled features
    return x, y


def neighbour_agreement(xy: np.ndarray, y: np.ndarray) -> float:
    """Share of points whose nearest other point on the map has their cluster."""
    dist = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(dist, np.inf)
    return float((y[dist.argmin(axis=1)] == y).mean())


def test_umap_keeps_clusters_apart_and_gives_the_same_map_every_time() -> None:
    x, y = clusters(600, np.random.default_rng(0))
    first = np.zeros(600, dtype=bool)
    shown = project(x, method="umap", first=first, seed=3)
    assert shown.method == "umap" and shown.fitted == 600
    assert shown.xy.shape == (600, 2) and np.isfinite(shown.xy).all()
    assert neighbour_agreement(shown.xy, y) > 0.95
    again = project(x, method="umap", first=first, seed=3)
    assert np.array_equal(shown.xy, again.xy)


def test_umap_fits_a_bounded_sample_and_places_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "FIT_POINTS", 500)
    x, y = clusters(900, np.random.default_rng(1))
    first = np.zeros(900, dtype=bool)
    first[[5, 700, 899]] = True  # marked items are always among the fitted ones
    shown = project(x, method="umap", first=first, seed=0)
    assert shown.method == "umap" and shown.fitted == 500
    assert "400 placed" in shown.note
    assert np.isfinite(shown.xy).all()
    # Placed items land among their own cluster, as fitted ones do.
    assert neighbour_agreement(shown.xy, y) > 0.95


def test_pca_when_asked_when_small_or_when_umap_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, _ = clusters(600, np.random.default_rng(2))
    first = np.zeros(600, dtype=bool)
    asked = project(x, method="pca", first=first, seed=0)
    assert asked.method == "pca" and "map_projection" in asked.note
    assert len(asked.explained_variance) == 2 and sum(asked.explained_variance) > 0.1
    small = project(x[:100], method="umap", first=first[:100], seed=0)
    assert small.method == "pca" and "fewer than" in small.note
    monkeypatch.setattr(projection, "umap_installed", lambda: False)
    missing = project(x, method="umap", first=first, seed=0)
    assert missing.method == "pca" and "not installed" in missing.note
    assert np.array_equal(missing.xy, asked.xy)
