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
    first, reused = project_clusters(settings, 3, ids, x)
    assert not reused and first.shape == (300,)
    again, reused = project_clusters(settings, 3, ids, x)
    assert reused and np.array_equal(again, first)

    # 20 new tasks (under a tenth of the pool): old ones keep their cluster, new ones go to the
    # cluster their blob-mates are in.
    extra = _blobs(320)[300:]
    ids2 = np.concatenate((ids, np.arange(2000, 2020, dtype=np.int64)))
    grown, reused = project_clusters(settings, 3, ids2, np.concatenate((x, extra)))
    assert reused and np.array_equal(grown[:300], first)
    mates = {b: first[np.arange(300) % 6 == b][0] for b in range(6)}
    assert [int(c) for c in grown[300:]] == [int(mates[i % 6]) for i in range(300, 320)]

    # A re-embedded pool (e.g. a fine-tuned backbone) is refit, not patched.
    _, reused = project_clusters(settings, 3, ids2, np.concatenate((x, extra)) * 2.0)
    assert not reused
    _, reused = project_clusters(settings, 3, ids2, np.concatenate((x, extra)) * 2.0)
    assert reused
