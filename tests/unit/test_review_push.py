"""Review flags: a stable suspicion value, and PATCHes only for tasks whose flag changed."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest
from sqlalchemy import select

from backend.labelstudio.auth import LabelStudioError
from backend.loop.push import (
    WRITE_WORKERS,
    LabelStudioPush,
    Suspect,
    TaskDataTarget,
    push_review,
    review_view_columns,
    suspicion_value,
    write_task_data,
)
from backend.store.db import Store
from backend.store.models import Project, ReviewFlag, Task
from tests.fake_labelstudio import FakeLabelStudio


class Recorder(FakeLabelStudio):
    def ensure_view(self, project: int, title: str, *args: Any, **kwargs: Any) -> int:
        self.view = (args, kwargs)
        return super().ensure_view(project, title, *args, **kwargs)


def _tasks(store: Store, n: int) -> None:
    with store.session() as session:
        session.add(Project(id=7))
        for i in range(n):
            session.add(Task(id=100 + i, project_id=7, image_ref=f"/x/{i}", data={"image": "i"}))


def _suspect(task: int, score: float) -> Suspect:
    return Suspect(task, score, f"labeled '1'; evidence says '7': {score:.0%}", "1", "7", score)


def test_one_new_suspect_costs_one_patch(store: Store) -> None:
    _tasks(store, 30)
    ls = Recorder(n_tasks=0, n_labeled=0)
    first = [_suspect(100 + i, 0.99 - i / 100) for i in range(20)]
    counts = push_review(cast(LabelStudioPush, ls), store, 7, "label_error", first, max_flags=50)
    assert counts["flagged"] == 20
    ls.calls.clear()
    # A new most suspicious item on top: every other rank shifts, no value changes.
    second = [_suspect(129, 0.999), *first]
    counts = push_review(
        cast(LabelStudioPush, ls), store, 7, "label_error", second, max_flags=50, image_key="image"
    )
    assert counts == {"flagged": 1, "unflagged": 0, "unchanged": 20, "over_limit": 0}
    assert [c for c in ls.calls if c[0] == "update_task_data"] == [("update_task_data", 129)]
    data = ls.task_data[129]
    assert data["labelloop_label_error_suspicion"] == 3.0  # -log10 of the 0.1 % it is right
    assert data["labelloop_given"] == "1" and data["labelloop_model"] == "7 (100%)"
    assert data["image"] == "i"  # the task's own data stays
    # The view orders by the value (highest first) and shows the case first.
    args, kwargs = ls.view
    assert args[1] == ["-tasks:data.labelloop_label_error_suspicion"]
    assert (
        kwargs["shown"]
        == review_view_columns("image", "label_error")
        == [
            "tasks:data.image",
            "tasks:data.labelloop_given",
            "tasks:data.labelloop_model",
            "tasks:data.labelloop_label_error_reason",
        ]
    )


def test_leaving_and_over_the_limit_are_counted(store: Store) -> None:
    _tasks(store, 5)
    ls = Recorder(n_tasks=0, n_labeled=0)
    suspects = [_suspect(100 + i, 0.9) for i in range(5)]
    push_review(cast(LabelStudioPush, ls), store, 7, "label_error", suspects, max_flags=5)
    counts = push_review(
        cast(LabelStudioPush, ls), store, 7, "label_error", suspects[:4], max_flags=3
    )
    assert counts == {"flagged": 0, "unflagged": 2, "unchanged": 3, "over_limit": 1}
    assert "labelloop_label_error_suspicion" not in ls.task_data[104]
    assert "labelloop_given" not in ls.task_data[104]


def test_flags_link_their_explanation_as_a_view_column_and_drop_it_when_cleared(
    store: Store,
) -> None:
    _tasks(store, 3)
    ls = Recorder(n_tasks=0, n_labeled=0)
    url = "http://labelloop:9090/dashboard/7/explain/100"
    flagged = [Suspect(100, 0.9, "labeled '1'; evidence says '7': 90%", "1", "7", 0.9, url)]
    push = cast(LabelStudioPush, ls)
    push_review(push, store, 7, "label_error", flagged, max_flags=50, image_key="image")
    assert ls.task_data[100]["labelloop_explain"] == url
    _, kwargs = ls.view
    assert kwargs["shown"] == review_view_columns("image", "label_error", explain=True)
    assert kwargs["shown"][-1] == "tasks:data.labelloop_explain"
    push_review(push, store, 7, "label_error", [], max_flags=50, image_key="image")
    assert "labelloop_explain" not in ls.task_data[100]


def test_the_most_suspicious_items_keep_their_order_in_the_written_value() -> None:
    scores = [0.2, 0.5, 0.9, 0.99, 0.995, 0.999, 0.9999, 1.0]
    values = [suspicion_value(s) for s in scores]
    assert values == sorted(values) and len(set(values)) == len(values)  # no ties at the top
    assert values[2:4] == [1.0, 2.0]
    assert suspicion_value(0.0) == 0.01  # a flag is never written as 0 (0 = not flagged)
    assert suspicion_value(0.9901) == suspicion_value(0.99)  # a small change needs no PATCH


def test_retraining_moves_below_a_step_write_nothing_and_a_new_label_writes(
    store: Store,
) -> None:
    _tasks(store, 10)
    ls = Recorder(n_tasks=0, n_labeled=0)
    push = cast(LabelStudioPush, ls)
    first = [_suspect(100 + i, 0.90 + i / 200) for i in range(10)]
    push_review(push, store, 7, "label_error", first, max_flags=50)
    ls.calls.clear()
    # The next model's evidence moves every value by less than a step: nothing is written.
    nudged = [_suspect(s.task_id, s.score + 0.004) for s in first]
    counts = push_review(push, store, 7, "label_error", nudged, max_flags=50)
    assert counts["flagged"] == 0 and counts["unchanged"] == 10
    assert not [c for c in ls.calls if c[0] == "update_task_data"]
    # One flag's evidence grows tenfold (1.0 -> 2.0) and another's suggested label changes.
    moved = list(nudged)
    moved[0] = _suspect(100, 0.99)
    moved[5] = Suspect(105, moved[5].score, "labeled '1'; evidence says '4'", "1", "4", 0.9)
    counts = push_review(push, store, 7, "label_error", moved, max_flags=50)
    assert counts["flagged"] == 2 and counts["unchanged"] == 8
    written = sorted(c[1] for c in ls.calls if c[0] == "update_task_data")
    assert written == [100, 105]
    assert ls.task_data[100]["labelloop_label_error_suspicion"] == 2.0
    assert ls.task_data[105]["labelloop_model"] == "4 (90%)"
    # Small moves add up: measured from the value written, not from the last cycle's.
    creeping = [_suspect(101, 0.905 + 0.004 * k) for k in range(1, 8)]
    writes = 0
    for suspect in creeping:
        step = [suspect if s.task_id == 101 else s for s in moved]
        writes += push_review(push, store, 7, "label_error", step, max_flags=50)["flagged"]
    assert writes == 1


class FlakyPatches(Recorder):
    """Label Studio that refuses one task's PATCH, and holds the first four PATCHes until all four
    are in flight (a barrier that breaks, failing the test, if they were sent one by one)."""

    def __init__(self, refuse: int) -> None:
        super().__init__(n_tasks=0, n_labeled=0)
        self.refuse, self.barrier = refuse, threading.Barrier(WRITE_WORKERS, timeout=10)

    def update_task_data(self, task: int, data: dict[str, Any]) -> None:
        if self.barrier is not None:
            self.barrier.wait()
        if task == self.refuse:
            raise LabelStudioError(500, "Server Error")
        super().update_task_data(task, data)


def test_flag_writes_go_out_together_and_a_refused_one_is_not_recorded(store: Store) -> None:
    _tasks(store, 8)
    ls = FlakyPatches(refuse=103)
    suspects = [_suspect(100 + i, 0.95 - i / 100) for i in range(WRITE_WORKERS)]
    with pytest.raises(LabelStudioError, match="Server Error"):
        push_review(cast(LabelStudioPush, ls), store, 7, "label_error", suspects, max_flags=50)
    with store.session() as session:
        flagged = {f.task_id for f in session.scalars(select(ReviewFlag)) if f.active}
        stored = {t.id: t.data for t in session.scalars(select(Task))}
    # The three Label Studio took are flagged and stored; the refused one is neither.
    assert flagged == {100, 101, 102}
    assert all("labelloop_given" in stored[i] for i in flagged)
    assert stored[103] == {"image": "i"}
    # The next push writes only what is still missing.
    ls.refuse, ls.barrier = -1, None
    ls.calls.clear()
    counts = push_review(cast(LabelStudioPush, ls), store, 7, "label_error", suspects, max_flags=50)
    assert counts["flagged"] == 1 and counts["unchanged"] == 3
    assert [c for c in ls.calls if c[0] == "update_task_data"] == [("update_task_data", 103)]


def test_every_refused_write_is_reported_and_the_first_returned(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    _tasks(store, 4)

    class Refusing(FakeLabelStudio):
        def update_task_data(self, task: int, data: dict[str, Any]) -> None:
            if task in (101, 103):
                raise LabelStudioError(500, f"Server Error on {task}")
            super().update_task_data(task, data)

    writes = {100 + i: {"image": "i", "labelloop_flag": i} for i in range(4)}
    ls = Refusing(n_tasks=0, n_labeled=0)
    with caplog.at_level("WARNING", logger="backend.loop.push"):
        written, error = write_task_data(cast(TaskDataTarget, ls), store, writes)
    assert written == {100, 102}
    assert isinstance(error, LabelStudioError) and "on 101" in str(error)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and warned[0].startswith("task 103: its data was not written")
    assert "Server Error on 103" in warned[0]
    with store.session() as session:
        stored = {t.id: t.data for t in session.scalars(select(Task))}
    assert stored[100] == writes[100] and stored[101] == {"image": "i"}
