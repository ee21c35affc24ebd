"""The embedding map's projection: UMAP when it can run (bounded fit, the rest placed beside
their most similar fitted items, the same map every time), PCA otherwise, and which one it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.diagnosis import projection
from backend.diagnosis.compute import DiagnosisInputs, compute_diagnosis
from backend.diagnosis.projection import KeptMap, project
from backend.settings import DiagnosisSettings


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


def test_a_kept_fit_is_shown_again_and_new_items_are_placed_beside_it() -> None:
    x, y = clusters(620, np.random.default_rng(4))
    ids = np.arange(1000, 1620, dtype=np.int64)
    first = np.zeros(600, dtype=bool)
    shown = project(x[:600], method="umap", first=first, seed=3, task_ids=ids[:600])
    assert shown.fit is not None and not shown.reused
    # The next cycle: 20 new items, one fitted item whose embedding changed.
    x2 = x.copy()
    x2[7] += 0.5
    again = project(
        x2, method="umap", first=np.zeros(620, dtype=bool), seed=9, task_ids=ids, kept=shown.fit
    )
    assert again.reused and again.method == "umap" and "earlier cycle" in again.note
    assert "21 placed" in again.note
    unchanged = np.setdiff1d(np.arange(600), [7])
    assert np.array_equal(again.xy[unchanged], shown.xy[unchanged])
    assert neighbour_agreement(again.xy, y) > 0.95  # the placed ones land in their cluster


def test_a_kept_fit_is_fitted_again_when_it_no_longer_describes_the_pool() -> None:
    x, _ = clusters(1500, np.random.default_rng(5))
    ids = np.arange(1, 1501, dtype=np.int64)
    none = np.zeros(1500, dtype=bool)
    shown = project(x[:600], method="umap", first=none[:600], seed=0, task_ids=ids[:600])
    assert shown.fit is not None
    tuned = project(
        x[:600] * 1.01, method="umap", first=none[:600], seed=0, task_ids=ids[:600], kept=shown.fit
    )  # new embeddings (a fine-tuned backbone)
    grown = project(x, method="umap", first=none, seed=0, task_ids=ids, kept=shown.fit)
    assert not tuned.reused and not grown.reused
    assert grown.fitted == 1500 and grown.fit is not None
    assert np.array_equal(grown.fit.task_ids, ids)


def test_kept_map_round_trips_and_an_unreadable_file_means_fitting_again(tmp_path: Path) -> None:
    x, _ = clusters(600, np.random.default_rng(6))
    ids = np.arange(10, 610, dtype=np.int64)
    fit = project(x, method="umap", first=np.zeros(600, dtype=bool), seed=0, task_ids=ids).fit
    assert fit is not None
    kept = KeptMap(tmp_path / "p1.map.npz")
    assert kept.load() is None
    kept.save(fit)
    loaded = kept.load()
    assert loaded is not None
    for name in ("task_ids", "fingerprints", "mean", "components", "reduced", "xy"):
        assert np.array_equal(getattr(loaded, name), getattr(fit, name)), name
    assert loaded.explained == fit.explained
    kept.path.write_bytes(b"not a zip file")
    assert kept.load() is None


def test_the_diagnosis_map_keeps_its_fit_and_draws_the_kept_items_again(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 1500
    x, y = clusters(n, rng)
    inputs = DiagnosisInputs(
        task_ids=np.arange(1, n + 1, dtype=np.int64),
        embeddings=x,
        labels=np.where(np.arange(n) < 60, y, -1).astype(np.int64),
        classes=("a", "b", "c", "d"),
        class_counts=np.bincount(y[:60], minlength=4),
    )
    limits = DiagnosisSettings(map_points=800)
    kept = KeptMap(tmp_path / "p1.map.npz")
    first = compute_diagnosis(inputs, limits=limits, rng=np.random.default_rng(0), kept_map=kept)
    assert kept.path.exists() and "earlier cycle" not in first.map.projection_note
    saved = kept.path.stat().st_mtime_ns
    # Another cycle with another random stream: the same items are drawn and shown where they were.
    second = compute_diagnosis(inputs, limits=limits, rng=np.random.default_rng(1), kept_map=kept)
    assert "earlier cycle" in second.map.projection_note
    assert second.map.task == first.map.task
    assert second.map.x == first.map.x and second.map.y == first.map.y
    assert kept.path.stat().st_mtime_ns == saved  # nothing new to keep
    pca = compute_diagnosis(
        inputs,
        limits=DiagnosisSettings(map_points=800, map_projection="pca"),
        rng=np.random.default_rng(1),
        kept_map=kept,
    )
    assert pca.map.projection == "pca"
