"""The diagnosis views against a real Label Studio: "labelloop: duplicates with conflicting
labels" and "labelloop: image quality" hold the planted tasks, in order, with the reason as a
task data column; a second push writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.diagnosis.duplicate_groups import find_duplicates
from backend.diagnosis.quality import image_quality
from backend.diagnosis.views import (
    DUPLICATES_VIEW,
    QUALITY_VIEW,
    duplicate_marks,
    push_view,
    quality_marks,
)
from backend.labelstudio.client import LabelStudio
from backend.loop import ingest
from backend.loop.image_stats import image_stats
from backend.loop.push import VIEW_TITLES, Suspect, push_review, review_view_columns
from backend.settings import ImageQualitySettings
from backend.store import repo
from backend.store.db import Store
from tests.conftest import SINGLE_CONFIG
from tests.integration.test_labelstudio_adapter import png

pytestmark = pytest.mark.integration


def _view_of(ls: LabelStudio, project: int, title: str) -> int:
    return next(v["id"] for v in ls.list_views(project) if v["data"].get("title") == title)


def test_duplicate_and_image_quality_views_hold_the_planted_tasks(
    ls: LabelStudio, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    colours = [tuple(int(v) for v in rng.integers(40, 215, 3)) for _ in range(8)]
    images = [png(c, (16, 12)) for c in colours]
    images[5] = png((8, 8, 10), (16, 12))  # dark
    project = ls.create_project("diagnosis views", SINGLE_CONFIG)
    ids = ls.upload_images(project, [(f"{i}.png", data) for i, data in enumerate(images)])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.upgrade()
    with store.session() as session:
        row = repo.ensure_project(session, project)
        for task in ids:
            ingest.upsert_task(session, row, ls.get_task(task))
    x = rng.normal(size=(8, 32))
    x[3] = x[1] + 0.01 * rng.normal(size=32)  # a near copy of task 1, labeled differently
    labels = ["a", "b", None, "c", None, None, "a", None]
    task_ids = np.asarray(ids, dtype=np.int64)
    dup = find_duplicates(task_ids, x, labels, hashes=None, splits=None, threshold=0.95, limit=10)
    written = push_view(ls, store, project, DUPLICATES_VIEW, duplicate_marks(dup), max_tasks=50)
    assert written == {"tasks_marked": 2, "tasks_written": 2}
    view = _view_of(ls, project, DUPLICATES_VIEW.title)
    shown = ls.view_tasks(project, view)
    assert {t["id"] for t in shown} == {ids[1], ids[3]}
    reason = {t["id"]: t["data"]["labelloop_duplicate_reason"] for t in shown}
    assert reason[ids[1]] == f"labeled 'b'; near-duplicate as {ids[3]} ('c')"
    assert all(t["data"]["image"] for t in shown)  # PATCH kept the image

    stats = np.stack([image_stats(data) for data in images])
    quality = image_quality(task_ids, stats, ImageQualitySettings(), None, np.zeros(8, bool))
    marks = quality_marks(quality)
    assert ids[5] in marks  # solid colours are also "low information"; the dark one is dark
    push_view(ls, store, project, QUALITY_VIEW, marks, max_tasks=50)
    view = _view_of(ls, project, QUALITY_VIEW.title)
    served = ls.view_tasks(project, view)
    assert [t["id"] for t in served] == list(marks)  # ordered by rank
    dark = next(t for t in served if t["id"] == ids[5])
    assert dark["data"]["labelloop_quality_issue"].startswith("dark (brightness")
    # The duplicates marks survive the quality push (each view writes only its own keys).
    assert "labelloop_duplicate_group" in ls.get_task(ids[1])["data"]
    again = push_view(ls, store, project, QUALITY_VIEW, marks, max_tasks=50)
    assert again["tasks_written"] == 0
    store.dispose()


def test_the_review_view_shows_the_explanation_link_column(ls: LabelStudio, tmp_path: Path) -> None:
    project = ls.create_project("explain column", SINGLE_CONFIG)
    ids = ls.upload_images(project, [("0.png", png((200, 0, 0))), ("1.png", png((0, 0, 200)))])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.upgrade()
    with store.session() as session:
        row = repo.ensure_project(session, project)
        for task in ids:
            ingest.upsert_task(session, row, ls.get_task(task))
    url = f"http://labelloop.test/dashboard/{project}/explain/{ids[0]}"
    flagged = [Suspect(ids[0], 0.9, "labeled 'a'; evidence says 'b': 90%", "a", "b", 0.9, url)]
    push_review(ls, store, project, "label_error", flagged, max_flags=10, image_key="image")
    view = next(
        v for v in ls.list_views(project) if v["data"]["title"] == VIEW_TITLES["label_error"]
    )
    hidden = set(view["data"]["hiddenColumns"]["explore"])
    visible = [c for c in ls.data_manager_columns(project) if c not in hidden]
    assert visible == review_view_columns("image", "label_error", explain=True)
    assert [t["data"]["labelloop_explain"] for t in ls.view_tasks(project, view["id"])] == [url]
    store.dispose()
