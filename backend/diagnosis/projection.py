"""The embedding map's 2-D projection: UMAP when it can run, PCA otherwise.

UMAP (umap-learn, the ``umap`` extra) keeps neighbourhoods: items the model sees as similar land
together and classes show as islands, where PCA's two directions of largest variance often pile
every class into one cloud. Its cost is bounded whatever the project's size: the embeddings go to
:data:`INPUT_DIMS` principal components first, UMAP is fitted on at most :data:`FIT_POINTS` of the
drawn items (a seeded sample, label-error candidates and outliers first), and every other drawn
item is placed at the similarity-weighted mean position of its :data:`ASSIGN_NEIGHBOURS` most
similar fitted items (numpy; no second UMAP pass). Fixed seed, one thread: the same map every
time.

A UMAP fit is kept between cycles (:class:`KeptMap`, one file per project): while nearly every
item it was fitted on is drawn again with the same embedding, and those make up most of the drawn
items, the kept positions are shown again and the other drawn items are placed beside the kept
fitted items (:func:`reuse`), so a cycle that changed a few labels neither pays for UMAP again
nor moves the map under its readers. A fine-tuned backbone (new embeddings), a pool that grew by
more than the fit, or another projection setting fits again.

PCA is used when ``diagnosis.map_projection`` says so, when umap-learn is not installed, or when
fewer than :data:`UMAP_MIN_POINTS` items are drawn (a map that small reads the same either way,
and UMAP's first use in a process compiles its numba code, tens of CPU seconds). The map records
which projection it used and why.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA

from backend.files import atomic_write
from backend.loop.clusters import fingerprints, known_rows

log = logging.getLogger(__name__)

Method = Literal["umap", "pca"]

#: Fewest drawn items UMAP runs on, most it is fitted on, principal components it runs on, and
#: fitted items an unfitted one is placed among.
UMAP_MIN_POINTS = 500
FIT_POINTS = 5000
INPUT_DIMS = 50
ASSIGN_NEIGHBOURS = 5
#: UMAP's neighbourhood size and optimisation epochs (200: its own default above 10,000 items).
NEIGHBOURS = 15
EPOCHS = 200
#: A kept fit is shown again while at least :data:`REUSE_KEPT` of its fitted items are drawn with
#: the same embedding and they are at least :data:`REUSE_DRAWN` of the drawn items.
REUSE_KEPT = 0.9
REUSE_DRAWN = 0.5


@dataclass(frozen=True)
class MapFit:
    """A UMAP fit kept for later cycles.

    Attributes:
        task_ids: (k,) ascending task ids of the fitted items.
        fingerprints: (k,) each fitted item's embedding fingerprint (a changed one is not reused).
        mean, components: the PCA the embeddings were reduced with before UMAP ((d,), (c, d)).
        reduced: (k, c) the fitted items' reduced embeddings.
        xy: (k, 2) where UMAP put them.
        explained: share of the variance the reduction kept.
    """

    task_ids: NDArray[np.int64]
    fingerprints: NDArray[np.float64]
    mean: NDArray[np.float64]
    components: NDArray[np.float64]
    reduced: NDArray[np.float64]
    xy: NDArray[np.float64]
    explained: float


@dataclass(frozen=True)
class KeptMap:
    """Where a project's UMAP fit is kept between cycles: one ``.npz`` file, replaced whole."""

    path: Path

    def load(self) -> MapFit | None:
        """The kept fit; None when there is none or it cannot be read (the map is fitted again)."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                fit = MapFit(
                    task_ids=np.asarray(data["task_ids"], dtype=np.int64),
                    fingerprints=np.asarray(data["fingerprints"], dtype=np.float64),
                    mean=np.asarray(data["mean"], dtype=np.float64),
                    components=np.asarray(data["components"], dtype=np.float64),
                    reduced=np.asarray(data["reduced"], dtype=np.float64),
                    xy=np.asarray(data["xy"], dtype=np.float64),
                    explained=float(data["explained"]),
                )
        except FileNotFoundError:
            return None
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("kept map %s unreadable (%s): fitting again", self.path, exc)
            return None
        k = fit.task_ids.shape[0]
        shapes_agree = (
            fit.fingerprints.shape == (k,)
            and fit.xy.shape == (k, 2)
            and fit.reduced.shape == (k, fit.components.shape[0])
            and fit.components.ndim == 2
            and fit.mean.shape == (fit.components.shape[1],)
            and bool(np.all(np.diff(fit.task_ids) > 0))
        )
        if not shapes_agree or k == 0:
            log.warning("kept map %s inconsistent: fitting again", self.path)
            return None
        return fit

    def save(self, fit: MapFit) -> None:
        with atomic_write(self.path) as handle:
            np.savez(
                handle,
                task_ids=fit.task_ids,
                fingerprints=fit.fingerprints,
                mean=fit.mean,
                components=fit.components,
                reduced=fit.reduced,
                xy=fit.xy,
                explained=np.float64(fit.explained),
            )


@dataclass(frozen=True)
class Projection:
    xy: NDArray[np.float64]
    method: Method
    #: Share of the variance PCA's two axes keep (PCA); of the components UMAP ran on (UMAP).
    explained_variance: list[float]
    fitted: int
    note: str
    #: The UMAP fit the map came from (to keep for later cycles); None for PCA.
    fit: MapFit | None = None
    #: The map is a kept fit shown again (:func:`reuse`), nothing new to keep.
    reused: bool = False


def umap_installed() -> bool:
    return importlib.util.find_spec("umap") is not None


def _pca(x: NDArray[np.floating], seed: int, note: str) -> Projection:
    if len(x) < 2 or x.shape[1] < 2:
        return Projection(np.zeros((len(x), 2)), "pca", [0.0, 0.0], len(x), note)
    pca = PCA(n_components=2, random_state=seed)
    xy = pca.fit_transform(x)
    explained = [round(float(v), 4) for v in pca.explained_variance_ratio_]
    return Projection(xy, "pca", explained, len(x), note)


def _unit(x: NDArray[np.floating]) -> NDArray[np.float64]:
    x = np.asarray(x, dtype=np.float64)
    unit: NDArray[np.float64] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit


def assign(
    rest: NDArray[np.floating], fitted: NDArray[np.floating], fitted_xy: NDArray[np.floating]
) -> NDArray[np.float64]:
    """(m, 2) positions of ``rest``: the similarity-weighted mean position of the
    :data:`ASSIGN_NEIGHBOURS` most similar ``fitted`` items (cosine), blockwise."""
    k = min(ASSIGN_NEIGHBOURS, len(fitted))
    a, b = _unit(rest), _unit(fitted)
    out = np.empty((len(rest), 2))
    for start in range(0, len(rest), 1024):
        sims = a[start : start + 1024] @ b.T
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.maximum(np.take_along_axis(sims, near, axis=1), 0.0) + 1e-6
        out[start : start + 1024] = np.einsum("ik,ikj->ij", weights, fitted_xy[near]) / weights.sum(
            axis=1, keepdims=True
        )
    return out


def knn(x: NDArray[np.floating], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Exact cosine k nearest neighbours (each item first, as UMAP expects), blockwise: at most
    FIT_POINTS items, so a fraction of a second, and UMAP skips its approximate search (whose
    numba code would be compiled on first use)."""
    k = min(k, len(x))
    u = _unit(x)
    indices = np.empty((len(x), k), dtype=np.int64)
    distances = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), 1024):
        dist = 1.0 - u[start : start + 1024] @ u.T
        rows = np.arange(start, start + len(dist))
        dist[rows - start, rows] = -1.0  # itself first
        near = np.argpartition(dist, k - 1, axis=1)[:, :k]
        near_dist = np.take_along_axis(dist, near, axis=1)
        order = np.argsort(near_dist, axis=1, kind="stable")
        indices[start : start + len(dist)] = np.take_along_axis(near, order, axis=1)
        distances[start : start + len(dist)] = np.maximum(
            np.take_along_axis(near_dist, order, axis=1), 0.0
        )
    return indices, distances


def _umap(
    x: NDArray[np.floating], first: NDArray[np.bool_], seed: int, task_ids: NDArray[np.int64]
) -> Projection:
    with warnings.catch_warnings():
        # The optional extra, imported only here (numba loads with it); it warns that its
        # TensorFlow-based ParametricUMAP is unavailable, which is not used.
        warnings.simplefilter("ignore")
        import umap
    from tqdm import tqdm

    # UMAP's progress bars are off, but tqdm would still start its monitor thread, which
    # outlives the call.
    tqdm.monitor_interval = 0
    components = min(INPUT_DIMS, x.shape[1], len(x) - 1)
    pca = PCA(n_components=components, random_state=seed)
    reduced = pca.fit_transform(x)
    explained = [round(float(pca.explained_variance_ratio_.sum()), 4)]
    rng = np.random.default_rng(seed)
    order = np.concatenate((np.flatnonzero(first), rng.permutation(np.flatnonzero(~first))))
    fit = np.sort(order[:FIT_POINTS])
    rest = np.setdiff1d(np.arange(len(x)), fit)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=NEIGHBOURS,
        n_epochs=EPOCHS,
        metric="cosine",
        random_state=seed,
        n_jobs=1,
        precomputed_knn=knn(reduced[fit], NEIGHBOURS),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; spectral init notes
        fitted_xy = np.asarray(reducer.fit_transform(reduced[fit]), dtype=np.float64)
    xy = np.empty((len(x), 2))
    xy[fit] = fitted_xy
    if len(rest):
        xy[rest] = assign(reduced[rest], reduced[fit], fitted_xy)
    note = f"UMAP fitted on {len(fit):,} items{_placed(len(rest))}"
    kept = MapFit(
        task_ids=np.asarray(task_ids[fit], dtype=np.int64),
        fingerprints=fingerprints(x[fit]),
        mean=np.asarray(pca.mean_, dtype=np.float64),
        components=np.asarray(pca.components_, dtype=np.float64),
        reduced=np.asarray(reduced[fit], dtype=np.float64),
        xy=fitted_xy,
        explained=explained[0],
    )
    return Projection(xy, "umap", explained, len(fit), note, fit=kept)


def _placed(n: int) -> str:
    return f", {n:,} placed beside their most similar fitted items" if n else ""


def reuse(x: NDArray[np.floating], task_ids: NDArray[np.int64], kept: MapFit) -> Projection | None:
    """The map of the drawn items ``x`` (task ids ``task_ids``) from a kept fit: its fitted
    items where they were, the others placed beside the most similar of them; None when the fit
    no longer describes the drawn items (module docstring)."""
    if x.shape[1] != kept.mean.shape[0] or len(x) == 0:
        return None
    pos, same = known_rows(kept.task_ids, kept.fingerprints, task_ids, fingerprints(x))
    if same.sum() < REUSE_KEPT * len(kept.task_ids) or same.mean() < REUSE_DRAWN:
        return None
    xy = np.empty((len(x), 2))
    xy[same] = kept.xy[pos[same]]
    others = np.flatnonzero(~same)
    if len(others):
        reduced = (np.asarray(x[others], dtype=np.float64) - kept.mean) @ kept.components.T
        xy[others] = assign(reduced, kept.reduced, kept.xy)
    note = f"UMAP fitted on {len(kept.task_ids):,} items in an earlier cycle{_placed(len(others))}"
    return Projection(xy, "umap", [kept.explained], len(kept.task_ids), note, fit=kept, reused=True)


def project(
    x: NDArray[np.floating],
    *,
    method: Method,
    first: NDArray[np.bool_],
    seed: int,
    task_ids: NDArray[np.int64] | None = None,
    kept: MapFit | None = None,
) -> Projection:
    """The 2-D map of ``x`` (the drawn items), with the projection it used and why.

    Args:
        x: (n, d) embeddings of the drawn items.
        method: ``"umap"`` (falls back to PCA, see the module) or ``"pca"``.
        first: (n,) items UMAP is fitted on before any other (label-error candidates, outliers).
        seed: PCA's and UMAP's seed.
        task_ids: (n,) the drawn items' task ids (default: their positions).
        kept: a fit kept from an earlier cycle, shown again where it still holds (:func:`reuse`).
    """
    ids = np.arange(len(x), dtype=np.int64) if task_ids is None else np.asarray(task_ids)
    if method == "pca":
        return _pca(x, seed, "chosen by diagnosis.map_projection")
    if not umap_installed():
        return _pca(x, seed, "umap-learn is not installed: pip install 'labelloop[umap]'")
    if len(x) < UMAP_MIN_POINTS:
        return _pca(x, seed, f"fewer than {UMAP_MIN_POINTS} items drawn: too few for UMAP")
    again = reuse(x, ids, kept) if kept is not None else None
    return again if again is not None else _umap(x, first, seed, ids)
