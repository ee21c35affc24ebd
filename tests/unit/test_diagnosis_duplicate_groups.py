"""Planted duplicates: exact (same hash) and near (close embeddings), conflicts, leaks, the view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from backend.diagnosis.duplicate_groups import find_duplicates, near_pairs
from backend.diagnosis.schema import ImageQuality
from backend.diagnosis.views import (
    DUPLICATES_VIEW,
    QUALITY_VIEW,
    duplicate_marks,
    push_view,
    quality_marks,
)
from backend.loop import ingest
from backend.store import repo
from backend.store.db import Store


def _planted(n: int = 300, d: int = 128) -> tuple[np.ndarray, list[str | None]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    x[10] = x[3]  # exact copy (same bytes: same hash below)
    x[20] = x[5] + 0.05 * rng.normal(size=d)  # near copy
    x[30] = x[7] + 0.05 * rng.normal(size=d)  # near copy, same label
    hashes: list[str | None] = [f"h{i}" for i in range(n)]
    hashes[10] = hashes[3]
    return x, hashes


def test_exact_and_near_duplicates_are_grouped_with_conflicts_first() -> None:
    x, hashes = _planted()
    labels: list[str | None] = [None] * len(x)
    labels[3], labels[10] = "cat", "dog"  # exact pair, labels disagree
    labels[5], labels[20] = "dog", "bird"  # near pair, labels disagree
    labels[7], labels[30] = "cat", "cat"  # near pair, agree
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    found = find_duplicates(ids, x, labels, hashes=hashes, splits=None, threshold=0.95, limit=50)
    groups = {tuple(g.tasks): g for g in found.groups}
    assert set(groups) == {(4, 11), (6, 21), (8, 31)}
    assert groups[(4, 11)].kind == "exact" and groups[(4, 11)].similarity == 1.0
    assert groups[(6, 21)].kind == "near" and 0.95 <= groups[(6, 21)].similarity < 1.0
    assert groups[(4, 11)].conflicting and groups[(6, 21)].conflicting
    assert not groups[(8, 31)].conflicting
    assert [g.tasks for g in found.groups][-1] == [8, 31]  # conflicts listed first
    assert (found.n_groups, found.n_exact, found.n_items, found.n_conflicting) == (3, 1, 6, 2)
    assert found.n_leaks == 0 and not found.has_splits


def test_duplicates_across_splits_are_leaks() -> None:
    x, hashes = _planted()
    splits: list[str | None] = ["train"] * len(x)
    splits[20] = "test"
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    labels: list[str | None] = [None] * len(x)
    found = find_duplicates(ids, x, labels, hashes=hashes, splits=splits, threshold=0.95, limit=50)
    leaks = [g.tasks for g in found.groups if g.leak]
    assert leaks == [[6, 21]] and found.n_leaks == 1 and found.groups[0].tasks == [6, 21]


def test_the_candidate_search_on_fewer_dimensions_misses_no_true_pair() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 256)) + 2.0  # correlated, like real embeddings
    copies = rng.choice(2000, 40, replace=False)
    x[copies[20:]] = x[copies[:20]] + 0.1 * rng.normal(size=(20, 256))
    centred = x - x.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    sims = unit @ unit.T
    i, j = np.nonzero(np.triu(sims >= 0.97, 1))
    fi, fj, found = near_pairs(x, threshold=0.97)
    assert set(zip(fi.tolist(), fj.tolist(), strict=True)) == set(
        zip(i.tolist(), j.tolist(), strict=True)
    )
    assert np.allclose(found, sims[fi, fj], atol=1e-4)


class FakeViews:
    def __init__(self) -> None:
        self.writes: list[tuple[int, dict[str, Any]]] = []
        self.views: dict[str, tuple[dict[str, Any], list[str]]] = {}

    def update_task_data(self, task: int, data: dict[str, Any]) -> None:
        self.writes.append((task, data))

    def ensure_view(self, project: int, title: str, filters: Any, ordering: Any) -> int:
        self.views[title] = (filters, list(ordering))
        return 1


def _store_with_tasks(tmp_path: Path) -> Store:
    """A store holding project 1 with tasks 1..40 (image ``/x/<id>.png``)."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.upgrade()
    with store.session() as session:
        project = repo.ensure_project(session, 1)
        for t in range(1, 41):
            ingest.upsert_task(session, project, {"id": t, "data": {"image": f"/x/{t}.png"}})
    return store


def test_the_view_marks_conflicting_groups_and_writes_only_changes(tmp_path: Path) -> None:
    x, hashes = _planted(n=40, d=16)
    labels: list[str | None] = [None] * len(x)
    labels[3], labels[10] = "cat", "dog"
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    found = find_duplicates(ids, x, labels, hashes=hashes, splits=None, threshold=0.95, limit=50)
    marks = duplicate_marks(found)
    assert marks[4] == (4, "labeled 'cat'; same image as 11 ('dog')")  # keyed by task 4
    store = _store_with_tasks(tmp_path)
    ls = FakeViews()
    counts = push_view(ls, store, 1, DUPLICATES_VIEW, marks, max_tasks=50)
    assert counts == {"tasks_marked": 2, "tasks_written": 2}
    assert {t for t, _ in ls.writes} == {4, 11}
    data = dict(ls.writes)[11]
    assert data["image"] == "/x/11.png" and data["labelloop_duplicate_group"] == 4
    assert ls.views[DUPLICATES_VIEW.title][1] == ["tasks:data.labelloop_duplicate_group"]
    again = FakeViews()
    assert push_view(again, store, 1, DUPLICATES_VIEW, marks, max_tasks=50)["tasks_written"] == 0
    cleared = FakeViews()
    assert push_view(cleared, store, 1, DUPLICATES_VIEW, {}, max_tasks=50)["tasks_written"] == 2
    assert all("labelloop_duplicate_group" not in d for _, d in cleared.writes)
    store.dispose()


def _quality(flagged: dict[int, str]) -> ImageQuality:
    return ImageQuality(
        n_measured=40,
        n_flagged=len(flagged),
        issues=[],
        flagged=list(flagged),
        flagged_reasons=list(flagged.values()),
    )


def test_a_new_finding_costs_one_write_not_a_renumbering(tmp_path: Path) -> None:
    store = _store_with_tasks(tmp_path)
    dark, blurry = "dark (brightness 0.05)", "blurry (sharpness 0.001)"
    before = {5: f"{dark}; {blurry}", 9: dark, 12: blurry, 30: dark}
    marks = quality_marks(_quality(before))
    assert marks[5][0] < marks[9][0] == marks[12][0]  # more issues first, then by task id
    push_view(FakeViews(), store, 1, QUALITY_VIEW, marks, max_tasks=50)
    # A newly imported image with two issues comes second: the others keep their values.
    after = {5: before[5], 2: f"{dark}; {blurry}", 9: dark, 12: blurry, 30: dark}
    ls = FakeViews()
    counts = push_view(ls, store, 1, QUALITY_VIEW, quality_marks(_quality(after)), max_tasks=50)
    assert counts == {"tasks_marked": 5, "tasks_written": 1}
    assert [t for t, _ in ls.writes] == [2]
    # Duplicates: a new conflicting group whose tasks sort first does not renumber the old one.
    x, hashes = _planted(n=40, d=16)
    labels: list[str | None] = [None] * len(x)
    labels[3], labels[10] = "cat", "dog"
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    found = find_duplicates(ids, x, labels, hashes=hashes, splits=None, threshold=0.95, limit=50)
    push_view(FakeViews(), store, 1, DUPLICATES_VIEW, duplicate_marks(found), max_tasks=50)
    x[0] = x[1]  # tasks 1 and 2 become copies, labeled apart
    labels[0], labels[1] = "cat", "dog"
    again = find_duplicates(ids, x, labels, hashes=hashes, splits=None, threshold=0.95, limit=50)
    assert len(again.conflicting) == 2
    ls = FakeViews()
    push_view(ls, store, 1, DUPLICATES_VIEW, duplicate_marks(again), max_tasks=50)
    assert sorted(t for t, _ in ls.writes) == [1, 2]
    store.dispose()
