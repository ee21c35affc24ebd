"""The pushed head of the labeling queue: top-K push, top-ups, pruning after the record."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from backend.labelstudio.config import parse_label_config
from backend.loop.queue import (
    QueueState,
    load_state,
    queue_positions,
    refill,
    refill_count,
    refill_under_lease,
    save_state,
)
from backend.settings import Settings
from backend.store import cycle_records, repo
from backend.store.db import Store
from backend.store.models import Annotation, utcnow
from tests.conftest import SINGLE_CONFIG, make_settings, upgraded_store
from tests.fake_labelstudio import FAST_MODEL, FakeLabelStudio, run_one_cycle

TOP_K = 6


@pytest.fixture
def top_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path, model=FAST_MODEL, strategy={"cold_start_labels": 0, "push_top_k": TOP_K}
    )


@pytest.fixture
def top_store(top_settings: Settings) -> Iterator[Store]:
    yield from upgraded_store(top_settings)


def _state(n: int = 5, pushed: int = 2) -> QueueState:
    suggested = np.zeros((n, 3), dtype=bool)
    suggested[np.arange(n), np.arange(n) % 3] = True
    return QueueState(
        version="v1",
        task_ids=np.array([50 + 7 * i for i in range(n)][::-1], dtype=np.int64),
        suggested=suggested,
        classes=("cat", "dog", "bird"),
        clusters=None,
        pushed=pushed,
    )


def test_state_round_trips_and_answers_positions(top_settings: Settings) -> None:
    state = _state()
    save_state(top_settings, 3, state)
    loaded = load_state(top_settings, 3)
    assert loaded is not None
    assert loaded.version == "v1" and loaded.pushed == 2 and loaded.classes == state.classes
    assert np.array_equal(loaded.task_ids, state.task_ids)
    assert np.array_equal(loaded.suggested, state.suggested)
    items = loaded.items(1, 3)
    assert [(i.task_id, i.position, i.labels) for i in items] == [
        (int(state.task_ids[1]), 0.2, ("dog",)),
        (int(state.task_ids[2]), 0.4, ("bird",)),
    ]
    first, last = int(state.task_ids[0]), int(state.task_ids[-1])
    assert queue_positions(top_settings, 3, "v1", [last, 9999, first]) == {last: 0.8, first: 0.0}
    assert queue_positions(top_settings, 3, "v0", [first]) == {}  # another version's queue
    assert load_state(top_settings, 4) is None


def test_refill_count_keeps_top_k_ahead_once_half_is_labeled() -> None:
    state = _state(n=20, pushed=6)
    head = [int(t) for t in state.task_ids[:6]]
    assert refill_count(state, set(head[:3]), 6) == 0  # half left: not yet
    assert refill_count(state, set(head[:4]), 6) == 4  # 2 left: push 4 more
    done = replace(state, pushed=20)
    assert refill_count(done, set(head), 6) == 0  # everything is pushed already


def test_cycle_pushes_top_k_and_refill_tops_it_up(top_settings: Settings, top_store: Store) -> None:
    ls = FakeLabelStudio()  # 30 tasks, 12 labeled
    run_one_cycle(top_settings, top_store, ls)
    head = sorted(ls.last_push(), key=lambda p: p["score"])
    assert len(head) == TOP_K
    state = load_state(top_settings, 7)
    assert state is not None and state.n == 18 and state.pushed == TOP_K
    assert [p["task"] for p in head] == [int(t) for t in state.task_ids[:TOP_K]]
    assert [p["score"] for p in head] == [i / 18 for i in range(TOP_K)]
    # One project PATCH per cycle: model version and sampling together.
    patches = [c for c in ls.calls if c[0] == "update_project"]
    assert patches == [
        ("update_project", {"model_version": ls.version, "sampling": "Uncertainty sampling"})
    ]
    cfg = parse_label_config(SINGLE_CONFIG)
    assert refill(top_settings, top_store, ls, 7, cfg) == 0  # nothing labeled yet
    _annotate(top_store, [int(t) for t in state.task_ids[:3]])
    assert refill(top_settings, top_store, ls, 7, cfg) == 0  # 3 of 6 left: enough
    _annotate(top_store, [int(state.task_ids[3])])
    added = refill(top_settings, top_store, ls, 7, cfg)
    assert added == 4
    pushed = sorted(ls.last_push(), key=lambda p: p["score"])
    assert [p["task"] for p in pushed] == [int(t) for t in state.task_ids[: TOP_K + 4]]
    assert [p["score"] for p in pushed[TOP_K:]] == [i / 18 for i in range(TOP_K, TOP_K + 4)]
    after = load_state(top_settings, 7)
    assert after is not None and after.pushed == TOP_K + 4


def _annotate(store: Store, tasks: list[int]) -> None:
    with store.session() as session:
        for task in tasks:
            session.add(Annotation(id=90_000 + task, project_id=7, task_id=task, labels=["cat"]))


def test_refill_waits_while_a_cycle_holds_the_lease(top_store: Store) -> None:
    with top_store.session() as session:
        repo.ensure_project(session, 7)
        assert cycle_records.acquire_lease(session, 7, "cycle", now=utcnow(), ttl_s=60)
    assert refill_under_lease(top_store, 7, lambda: 1) is None
    with top_store.session() as session:
        cycle_records.release_lease(session, 7, "cycle")
    assert refill_under_lease(top_store, 7, lambda: 1) == 1


def test_old_versions_are_pruned_after_the_cycle_is_recorded(
    top_settings: Settings, top_store: Store
) -> None:
    ls = FakeLabelStudio()
    run_one_cycle(top_settings, top_store, ls)
    first = ls.version
    run_one_cycle(top_settings, top_store, ls)
    assert ls.version != first
    assert set(ls.model_versions(7)) == {ls.version}  # the first version's predictions are gone
    with top_store.session() as session:
        record = cycle_records.to_dict(cycle_records.history(session, 7, 1)[0])
    assert record["state"] == "succeeded"
    assert record["counts"]["after"]["deleted_predictions"] == TOP_K
    assert "after" in record["stage_timings"]
    # The deletion came after the switch to the new version.
    names = [c[0] for c in ls.calls]
    last_switch = max(i for i, n in enumerate(names) if n == "update_project")
    assert names.index("delete_model_version") > last_switch
