"""Reconcile logic against a scripted Label Studio (the real one is in tests/integration)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backend.loop.sync import full_sync_due, reconcile
from backend.store import repo
from backend.store.db import Store
from backend.store.models import Project, Task
from tests.conftest import SINGLE_CONFIG, deliver


def _ann(ann_id: int, label: str, updated: str = "2026-01-01T10:00:00Z") -> dict[str, Any]:
    return {
        "id": ann_id,
        "completed_by": 1,
        "result": [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
        "created_at": "2026-01-01T09:00:00Z",
        "updated_at": updated,
    }


class ScriptedLabelStudio:
    """The two calls reconcile makes, over tasks held in memory."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.calls: list[datetime | None] = []  # full listings, by their updated_since
        self.stamp_calls: list[datetime | None] = []  # stamp listings

    def add(
        self, task_id: int, *anns: dict[str, Any], updated: str = "2026-01-01T10:00:00Z"
    ) -> None:
        self.tasks[task_id] = {
            "id": task_id,
            "data": {"image": f"/data/upload/1/{task_id}.png"},
            "updated_at": updated,
            "annotations": list(anns),
        }

    def get_project(self, project: int) -> dict[str, Any]:
        return {"id": project, "title": "pets", "label_config": SINGLE_CONFIG}

    def iter_tasks(
        self, project: int, *, updated_since: datetime | None = None
    ) -> Iterator[dict[str, Any]]:
        self.calls.append(updated_since)
        for task_id in sorted(self.tasks):
            task = self.tasks[task_id]
            stamp = repo.parse_ts(task["updated_at"])
            if updated_since is None or (stamp is not None and stamp > updated_since):
                yield copy.deepcopy(task)

    def iter_task_stamps(
        self, project: int, *, updated_since: datetime | None = None
    ) -> Iterator[tuple[int, str | None]]:
        self.stamp_calls.append(updated_since)
        for task_id in sorted(self.tasks):
            stamp = repo.parse_ts(self.tasks[task_id]["updated_at"])
            if updated_since is None or (stamp is not None and stamp > updated_since):
                yield task_id, self.tasks[task_id]["updated_at"]


def _state(store: Store) -> tuple[list[int], dict[int, list[str]]]:
    with store.session() as session:
        tasks = [t.id for t in repo.live_tasks(session, 1)]
        anns = {a.id: a.labels for a in repo.live_annotations(session, 1)}
    return tasks, anns


@pytest.fixture
def ls() -> ScriptedLabelStudio:
    fake = ScriptedLabelStudio()
    fake.add(1, _ann(10, "cat"))
    fake.add(2, _ann(11, "dog"), _ann(12, "bird"))
    fake.add(3)
    return fake


def test_full_sync_makes_the_store_equal(store: Store, ls: ScriptedLabelStudio) -> None:
    report = reconcile(store, ls, 1)
    assert _state(store) == ([1, 2, 3], {10: ["cat"], 11: ["dog"], 12: ["bird"]})
    assert report.tasks == 3 and report.annotations == 3
    # What Label Studio lost meanwhile (a task, an annotation) is tombstoned; edits land.
    del ls.tasks[3]
    ls.add(2, _ann(11, "cat", updated="2026-01-02T10:00:00Z"), updated="2026-01-02T10:00:00Z")
    report = reconcile(store, ls, 1)
    assert _state(store) == ([1, 2], {10: ["cat"], 11: ["cat"]})
    assert (report.tasks_deleted, report.annotations_deleted) == (1, 1)
    again = reconcile(store, ls, 1)
    assert (again.tasks_deleted, again.annotations_deleted) == (0, 0)
    assert set(again.annotations_changed) == {"unchanged"}


def test_incremental_sync_lists_only_changed_tasks(store: Store, ls: ScriptedLabelStudio) -> None:
    # Label Studio's clock here is ten months behind ours: the cursor must be on its clock.
    ls.add(1, _ann(10, "cat"), updated="2026-01-01T08:00:00Z")
    ls.add(3, updated="2026-01-01T08:00:00Z")
    reconcile(store, ls, 1)
    ls.add(2, _ann(11, "bird", updated="2026-01-03T10:00:00Z"), updated="2026-01-03T10:00:00Z")
    report = reconcile(store, ls, 1, incremental=True)
    assert report.incremental and report.tasks == 1 and report.probed == 1
    # Stamps from 2 minutes before the newest updated_at the full sync saw (2026-01-01T10:00);
    # full tasks from the one stamp that changed.
    assert ls.stamp_calls[-1] == repo.parse_ts("2026-01-01T09:58:00Z")
    assert ls.calls[-1] == repo.parse_ts("2026-01-03T10:00:00Z") - timedelta(microseconds=1)
    # Annotation 12 vanished from the changed task: deleted. Task 1 was not listed: kept.
    assert _state(store) == ([1, 2, 3], {10: ["cat"], 11: ["bird"]})
    # The cursor moved to the newest change listed; nothing new: stamps only, no full listing.
    again = reconcile(store, ls, 1, incremental=True)
    assert ls.stamp_calls[-1] == repo.parse_ts("2026-01-03T09:58:00Z")
    assert len(ls.calls) == 2 and (again.tasks, again.probed) == (0, 1)


def test_incremental_sync_right_after_a_bulk_import_lists_no_task_again(
    store: Store, ls: ScriptedLabelStudio
) -> None:
    # A thousand tasks imported in the same second: all inside the overlap of the next sync.
    for task_id in range(4, 1004):
        ls.add(task_id, updated="2026-01-01T10:00:00.5Z")
    reconcile(store, ls, 1)
    report = reconcile(store, ls, 1, incremental=True)
    assert (report.tasks, report.probed) == (0, 1003) and ls.calls == [None]
    # One of them labeled meanwhile, inside the window: found by its stamp, listed alone.
    ls.add(500, _ann(20, "cat", updated="2026-01-01T10:00:30Z"), updated="2026-01-01T10:00:30Z")
    report = reconcile(store, ls, 1, incremental=True)
    assert report.tasks == 1 and _state(store)[1][20] == ["cat"]
    # A task whose stamp matches but which the store lost track of (deleted) is listed again.
    with store.session() as session:
        session.get(Task, 7).deleted = True  # type: ignore[union-attr]
    report = reconcile(store, ls, 1, incremental=True)
    assert 7 in _state(store)[0] and report.tasks >= 1


def test_a_webhook_that_stamped_a_task_does_not_hide_its_annotations_from_the_sync(
    store: Store, ls: ScriptedLabelStudio
) -> None:
    """An import with annotations sends TASKS_CREATED with the task's stamp but no annotations:
    the incremental sync that applies it still lists the task (its stamp is not one a full
    listing gave) and takes the annotations."""
    reconcile(store, ls, 1)
    ls.add(50, _ann(20, "cat"), updated="2026-01-01T10:00:10Z")  # inside the overlap window
    webhook = {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": [dict(ls.tasks[50])]}
    webhook["tasks"][0].pop("annotations")
    deliver(store, webhook)
    report = reconcile(store, ls, 1, incremental=True)
    assert report.events_applied == 1 and report.tasks == 1
    assert _state(store) == ([1, 2, 3, 50], {10: ["cat"], 11: ["dog"], 12: ["bird"], 20: ["cat"]})
    again = reconcile(store, ls, 1, incremental=True)  # now listed in full: not listed again
    assert again.tasks == 0 and again.probed >= 1


def _age_syncs(store: Store, by: timedelta) -> None:
    """As if the syncs so far had run ``by`` earlier (on our clock)."""
    with store.session() as session:
        project = session.get(Project, 1)
        assert project is not None and project.ls_cursor_seen_at is not None
        assert project.ls_window_checked_at is not None
        project.ls_cursor_seen_at -= by
        project.ls_window_checked_at -= by


def test_the_window_before_the_cursor_is_checked_once_it_has_settled(
    store: Store, ls: ScriptedLabelStudio
) -> None:
    reconcile(store, ls, 1)
    # Right after the listing a transaction may still commit inside the window: check it.
    assert reconcile(store, ls, 1, incremental=True).probed == 3
    assert reconcile(store, ls, 1, incremental=True).probed == 3
    # Two minutes after the cursor took its value, one more check settles the window...
    _age_syncs(store, timedelta(minutes=2))
    assert reconcile(store, ls, 1, incremental=True).probed == 3
    # ... and later syncs of an idle project list only what is newer than the cursor.
    checks = len(ls.stamp_calls)
    quiet = reconcile(store, ls, 1, incremental=True)
    assert (quiet.probed, quiet.tasks, len(ls.stamp_calls)) == (0, 0, checks)
    assert ls.calls[-1] == repo.parse_ts("2026-01-01T10:00:00Z")
    # A new label moves the cursor: that sync lists it, and the next checks the new window.
    ls.add(3, _ann(13, "dog", updated="2026-01-01T10:05:00Z"), updated="2026-01-01T10:05:00Z")
    moved = reconcile(store, ls, 1, incremental=True)
    assert (moved.probed, moved.tasks) == (0, 1) and _state(store)[1][13] == ["dog"]
    assert reconcile(store, ls, 1, incremental=True).probed == 1


def test_incremental_sync_follows_label_studio_clock_ahead_of_ours(
    store: Store, ls: ScriptedLabelStudio
) -> None:
    future = "2099-01-01T10:00:00Z"  # a Label Studio clock far ahead of ours
    ls.add(3, updated=future)
    reconcile(store, ls, 1)
    ls.add(1, _ann(10, "dog", updated="2099-01-01T10:05:00Z"), updated="2099-01-01T10:05:00Z")
    report = reconcile(store, ls, 1, incremental=True)
    # Task 3 lies inside the 2-minute overlap but its stamp is unchanged: only task 1 is listed.
    assert (report.tasks, report.probed) == (1, 2)
    assert _state(store)[1][10] == ["dog"]


def test_incremental_without_a_previous_sync_is_full(store: Store, ls: ScriptedLabelStudio) -> None:
    report = reconcile(store, ls, 1, incremental=True)
    assert not report.incremental and ls.calls == [None]
    assert report.tasks == 3


def test_a_full_pass_is_due_when_never_made_and_again_after_its_interval(
    store: Store, ls: ScriptedLabelStudio
) -> None:
    assert full_sync_due(store, 1, 3600)  # the project was never listed
    reconcile(store, ls, 1, incremental=True)  # falls back to a full pass, which is recorded
    with store.session() as session:
        done = session.get(Project, 1).last_full_sync_at  # type: ignore[union-attr]
    assert done is not None
    assert not full_sync_due(store, 1, 3600, now=done + timedelta(minutes=59))
    assert full_sync_due(store, 1, 3600, now=done + timedelta(minutes=60))
    assert full_sync_due(store, 1, 0, now=done)  # 0: every cycle lists everything
    # An incremental pass does not count as a full one.
    reconcile(store, ls, 1, incremental=True)
    with store.session() as session:
        assert session.get(Project, 1).last_full_sync_at == done  # type: ignore[union-attr]


def test_a_cycle_lists_only_changed_tasks_between_full_passes(
    store: Store, ls: ScriptedLabelStudio, tmp_path: Path
) -> None:
    from backend.loop.cycle import run_cycle
    from backend.settings import Settings

    class Stop(Exception):
        """Ends the cycle once the reconcile stage is recorded."""

    class Ctx:
        cycle_id, progress = 1, None
        counts: dict[str, dict[str, int]] = {}

        @contextmanager
        def stage(self, name: str) -> Iterator[dict[str, int]]:
            counts = self.counts[name] = {}
            yield counts
            if name == "reconcile":
                raise Stop

    settings = Settings.model_validate({"store": {"data_dir": str(tmp_path)}})
    for expected_stamps in ([], [repo.parse_ts("2026-01-01T09:58:00Z")]):
        ctx = Ctx()
        with pytest.raises(Stop):
            run_cycle(ctx, settings, store, ls, 1, diagnose=None)  # type: ignore[arg-type]
        assert ls.calls == [None] and ls.stamp_calls == expected_stamps
    assert ctx.counts["reconcile"]["incremental"] == 1
    with store.session() as session:  # the next full pass is due an hour after the first
        session.get(Project, 1).last_full_sync_at -= timedelta(hours=1)  # type: ignore[union-attr]
    with pytest.raises(Stop):
        run_cycle(Ctx(), settings, store, ls, 1, diagnose=None)  # type: ignore[arg-type]
    assert ls.calls[-1] is None
