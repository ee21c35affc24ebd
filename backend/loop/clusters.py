"""A project's k-means clusters and principal directions, reused across cycles while the pool
barely changes.

k-means over 100,000 x 1280 embeddings costs seconds; between two cycles usually only a few
hundred tasks are new. So the clustering is stored per project (``<data_dir>/clusters/p<id>.npz``:
centres, and each task's cluster and an embedding fingerprint), and the next cycle reuses it:
tasks it has seen with the same embedding keep their cluster, new or re-embedded tasks are
assigned to the nearest stored centre (:func:`strategies.coverage.assign_to_centers`). Once more
than :data:`REFIT_SHARE` of the pool was assigned that way since the last fit (or the number of
clusters asked for, or the embedding size, changed), k-means runs again from scratch.

The pool's principal directions (:func:`strategies.coldstart.principal_basis`, the reduced space
of the TypiClust order, the bandit's proxy features and the near-copy search) are stored with the
clustering and refitted with it: a few hundred new tasks do not move the directions of largest
variance of a pool of thousands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.files import atomic_write
from backend.settings import Settings
from strategies.base import Basis
from strategies.coldstart import principal_basis
from strategies.coverage import assign_to_centers, cluster_embeddings, default_n_clusters

log = logging.getLogger(__name__)
#: Refit once this share of the pool was assigned to old centres instead of fitted.
REFIT_SHARE = 0.1
#: Leading embedding dimensions summed into a task's fingerprint (a changed embedding shows).
FINGERPRINT_DIMS = 32


@dataclass(frozen=True, eq=False)
class StoredClusters:
    """Attributes: task_ids (n,) ascending; labels (n,) their clusters; fingerprints (n,);
    centers (K, d); asked: the ``strategy.n_clusters`` it was fit for (0 = the default rule);
    n_fit: pool size at the fit; assigned: tasks assigned to old centres since; basis: the
    pool's principal directions at the fit (None: the embeddings have too few dimensions, or a
    file written before directions were stored)."""

    task_ids: NDArray[np.int64]
    labels: NDArray[np.int64]
    fingerprints: NDArray[np.float64]
    centers: NDArray[np.float32]
    asked: int
    n_fit: int
    assigned: int
    basis: Basis | None = None


@dataclass(frozen=True)
class ProjectClusters:
    """What :func:`project_clusters` hands the pool: labels (n,) the cluster of each task; basis:
    the principal directions (None where the embeddings have too few dimensions); reused: the
    stored clustering was carried over (False: k-means ran)."""

    labels: NDArray[np.int64]
    basis: Basis | None
    reused: bool


def fingerprints(embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
    sums: NDArray[np.float64] = np.asarray(embeddings[:, :FINGERPRINT_DIMS], dtype=np.float64).sum(
        axis=1
    )
    return sums


def known_rows(
    kept_ids: NDArray[np.int64],
    kept_prints: NDArray[np.float64],
    task_ids: NDArray[np.int64],
    prints: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """For each of ``task_ids`` (with embedding :func:`fingerprints` ``prints``): its slot in
    the kept, ascending ``kept_ids``, and whether it is there with the same embedding."""
    slot = np.clip(np.searchsorted(kept_ids, task_ids), 0, kept_ids.size - 1)
    known = (kept_ids[slot] == task_ids) & np.isclose(
        kept_prints[slot], prints, rtol=1e-6, atol=1e-6
    )
    return slot, known


def _path(settings: Settings, project_id: int) -> Path:
    return settings.store.data_dir / "clusters" / f"p{project_id}.npz"


def _save(settings: Settings, project_id: int, stored: StoredClusters) -> None:
    arrays: dict[str, NDArray[Any]] = {
        "task_ids": stored.task_ids,
        "labels": stored.labels,
        "fingerprints": stored.fingerprints,
        "centers": stored.centers,
        "meta": np.array([stored.asked, stored.n_fit, stored.assigned], dtype=np.int64),
    }
    if stored.basis is not None:
        arrays["basis_mean"] = stored.basis.mean
        arrays["basis_components"] = stored.basis.components
    with atomic_write(_path(settings, project_id)) as handle:
        np.savez(handle, allow_pickle=False, **arrays)


def _load(settings: Settings, project_id: int) -> StoredClusters | None:
    path = _path(settings, project_id)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        asked, n_fit, assigned = (int(v) for v in data["meta"])
        basis = None
        if "basis_mean" in data.files and "basis_components" in data.files:
            basis = Basis(data["basis_mean"], data["basis_components"])
        return StoredClusters(
            data["task_ids"], data["labels"], data["fingerprints"], data["centers"], asked,
            n_fit, assigned, basis,
        )  # fmt: skip


def _reuse(
    stored: StoredClusters,
    task_ids: NDArray[np.int64],
    embeddings: NDArray[np.floating],
    prints: NDArray[np.float64],
) -> StoredClusters | None:
    """The stored clustering carried over to this pool, or None when it must be refit."""
    if not stored.task_ids.size or stored.centers.shape[1] != embeddings.shape[1]:
        return None
    slot, known = known_rows(stored.task_ids, stored.fingerprints, task_ids, prints)
    assigned = stored.assigned + int((~known).sum())
    if assigned > REFIT_SHARE * stored.n_fit:
        return None
    labels = stored.labels[slot].copy()
    labels[~known], _ = assign_to_centers(embeddings[~known], stored.centers)
    return StoredClusters(
        task_ids, labels, prints, stored.centers, stored.asked, stored.n_fit, assigned,
        stored.basis,
    )  # fmt: skip


def _directions(settings: Settings, embeddings: NDArray[np.floating]) -> Basis | None:
    return principal_basis(embeddings, rng=np.random.default_rng(settings.model.seed))


def project_clusters(
    settings: Settings,
    project_id: int,
    task_ids: NDArray[np.int64],
    embeddings: NDArray[np.floating],
) -> ProjectClusters:
    """The cluster of each task (``task_ids`` ascending) and the pool's principal directions,
    carried over from the stored clustering where it serves, else fitted (and stored for the next
    cycle)."""
    asked = settings.strategy.n_clusters or 0
    prints = fingerprints(embeddings)
    stored = _load(settings, project_id)
    kept = (
        _reuse(stored, task_ids, embeddings, prints) if stored and stored.asked == asked else None
    )
    if kept is not None:
        if kept.basis is None or kept.basis.dim != embeddings.shape[1]:
            kept = replace(kept, basis=_directions(settings, embeddings))
        _save(settings, project_id, kept)
        return ProjectClusters(kept.labels, kept.basis, True)
    n = int(task_ids.shape[0])
    k = asked or default_n_clusters(n)
    clustering = cluster_embeddings(
        embeddings, n_clusters=k, rng=np.random.default_rng(settings.model.seed)
    )
    fitted = StoredClusters(
        task_ids, clustering.labels, prints, clustering.centers.astype(np.float32), asked, n, 0,
        _directions(settings, embeddings),
    )  # fmt: skip
    _save(settings, project_id, fitted)
    log.info("project %d: k-means of %d embeddings into %d clusters", project_id, n, k)
    return ProjectClusters(clustering.labels, fitted.basis, False)
