"""The warm path of a cycle's featurization: an unchanged task's image is never fetched again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from backend.loop.embed import embed_tasks
from backend.loop.sync import reconcile
from backend.store import repo
from backend.store.db import Store
from tests.conftest import SMALL_MODEL, make_settings
from tests.unit.model.conftest import png_bytes
from tests.unit.test_sync import ScriptedLabelStudio


class CountingImages:
    """Image bytes per reference, counting every fetch."""

    def __init__(self) -> None:
        self.bytes: dict[str, bytes] = {}
        self.fetched: list[str] = []

    def fetch(self, ref: str) -> bytes:
        self.fetched.append(ref)
        return self.bytes[ref]


def test_second_pass_fetches_nothing_and_a_changed_reference_is_fetched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, model=SMALL_MODEL)
    store = Store(settings.store.url)
    store.upgrade()
    ls, images = ScriptedLabelStudio(), CountingImages()
    for task_id in range(1, 7):
        ls.add(task_id)
        images.bytes[f"/data/upload/1/{task_id}.png"] = png_bytes((40 * task_id, 90, 10))
    reconcile(store, ls, 1)

    def tasks() -> list:
        with store.session() as session:
            return repo.live_tasks(session, 1)

    progress: list[tuple[int, int, float]] = []
    with caplog.at_level(logging.INFO, logger="backend.model.featurize"):
        first, _ = embed_tasks(
            settings, store, tasks(), images.fetch, progress=lambda *p: progress.append(p)
        )
    assert len(images.fetched) == 6 and first.n_computed == 6 and first.n_fetched == 6
    assert progress[-1][:2] == (6, 6) and progress[-1][2] > 0
    assert "6/6 images" in caplog.text and "images/s" in caplog.text

    images.fetched.clear()
    second, _ = embed_tasks(settings, store, tasks(), images.fetch)
    assert images.fetched == []  # every task was embedded from the same reference before
    assert (second.n_fetched, second.n_computed, second.n_cached) == (0, 0, 6)
    assert second.embeddings.keys() == first.embeddings.keys()

    # Task 2 now points at another file (same reference text elsewhere is not enough to skip).
    ls.add(2, updated="2026-01-02T10:00:00Z")
    ls.tasks[2]["data"]["image"] = "/data/upload/1/2-new.png"
    images.bytes["/data/upload/1/2-new.png"] = png_bytes((1, 2, 250))
    ls.add(7)  # a task imported since: never embedded, so fetched
    images.bytes["/data/upload/1/7.png"] = png_bytes((7, 7, 7))
    reconcile(store, ls, 1)
    third, _ = embed_tasks(settings, store, tasks(), images.fetch)
    assert sorted(images.fetched) == ["/data/upload/1/2-new.png", "/data/upload/1/7.png"]
    assert third.n_computed == 2 and len(third.embeddings) == 7

    images.fetched.clear()
    embed_tasks(settings, store, tasks(), images.fetch)
    assert images.fetched == []
    store.dispose()


def test_record_writes_only_rows_that_change(tmp_path: Path) -> None:
    from dataclasses import dataclass

    from sqlalchemy import select

    from backend.store import task_images
    from backend.store.models import Project, Task, TaskImage

    @dataclass
    class Result:
        embeddings: dict[int, object]
        hashes: dict[int, str]

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.upgrade()
    with store.session() as session:
        session.add_all([Project(id=1), Project(id=2)])
        session.flush()
        session.add_all([Task(id=i, project_id=1, image_ref=f"/img/{i}.png") for i in (1, 2, 3)])
        session.add(Task(id=9, project_id=2, image_ref="/img/9.png"))
    with store.session() as session:
        tasks = list(session.scalars(select(Task).order_by(Task.id)))
        session.expunge_all()
    shas = {i: f"{i:064x}" for i in (1, 2, 3, 9)}
    everything = Result({i: None for i in shas}, shas)
    with store.session() as session:
        assert task_images.record(session, tasks, everything, "bb") == 4  # all new
    with store.session() as session:
        assert task_images.record(session, tasks, everything, "bb") == 0  # a warm cycle
    tasks[1].image_ref = "/img/2-again.png"  # re-imported
    changed = Result({1: None, 2: None, 3: None}, {**shas, 3: f"{33:064x}"})
    with store.session() as session:
        assert task_images.record(session, tasks, changed, "bb") == 2
    with store.session() as session:
        assert task_images.record(session, tasks[:1], everything, "other-backbone") == 1
    with store.session() as session:
        rows = {
            r.task_id: (r.sha, r.backbone, r.image_ref) for r in session.scalars(select(TaskImage))
        }
    assert rows == {
        1: (shas[1], "other-backbone", "/img/1.png"),
        2: (shas[2], "bb", "/img/2-again.png"),
        3: (f"{33:064x}", "bb", "/img/3.png"),
        9: (shas[9], "bb", "/img/9.png"),
    }
