"""The review view against a real Label Studio: what a reviewer sees first, and its order."""

from __future__ import annotations

import pytest

from backend.labelstudio.client import LabelStudio
from backend.loop.push import review_view_columns, review_view_filters
from tests.conftest import SINGLE_CONFIG
from tests.integration.test_labelstudio_adapter import COLORS, png

pytestmark = pytest.mark.integration


def test_the_view_shows_image_given_model_and_reason_first_and_orders_by_suspicion(
    ls: LabelStudio,
) -> None:
    project = ls.create_project("review columns", SINGLE_CONFIG)
    ids = ls.upload_images(project, [(f"{i}.png", png(c)) for i, c in enumerate(COLORS[:3])])
    for task, value in zip(ids, (0.61, 0.97, 0.8), strict=True):
        data = dict(ls.get_task(task)["data"])
        data.update(
            labelloop_given="1",
            labelloop_model="7 (93%)",
            labelloop_label_error_reason="labeled '1'; evidence says '7'",
            labelloop_label_error_suspicion=value,
        )
        ls.update_task_data(task, data)
    filters, ordering = review_view_filters("label_error")
    shown = review_view_columns("image", "label_error")
    view_id = ls.ensure_view(project, "review", filters, ordering, shown=shown)
    view = next(v for v in ls.list_views(project) if v["id"] == view_id)
    hidden = view["data"]["hiddenColumns"]
    assert hidden["explore"] == hidden["labeling"]
    # What the Data Manager draws: the project's columns in Label Studio's order, less the hidden.
    visible = [c for c in ls.data_manager_columns(project) if c not in set(hidden["explore"])]
    assert visible == shown
    assert "tasks:id" in hidden["explore"] and "tasks:total_annotations" in hidden["explore"]
    # The view serves the tasks by suspicion, highest first.
    assert [t["id"] for t in ls.view_tasks(project, view_id)] == [ids[1], ids[2], ids[0]]
    # Idempotent: a second call changes nothing and finds the same view.
    assert ls.ensure_view(project, "review", filters, ordering, shown=shown) == view_id
