"""Group commit: concurrent webhook deliveries share one transaction, each caller its result."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from backend.store import repo
from backend.store.db import Store
from backend.store.group import GroupCommit


def test_a_lone_item_is_written_at_once_in_a_batch_of_its_own() -> None:
    batches: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(write)
    assert group.submit(4) == 40
    assert group.submit(5) == 50
    assert batches == [[4], [5]]


def test_items_arriving_during_a_commit_are_written_together_by_the_next() -> None:
    first_started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def write(items: Sequence[int]) -> list[str]:
        batches.append(list(items))
        if len(batches) == 1:
            first_started.set()
            assert release.wait(10)
        return [f"r{i}" for i in items]

    group: GroupCommit[int, str] = GroupCommit(write)
    results: dict[int, str] = {}

    def send(i: int) -> None:
        results[i] = group.submit(i)

    leader = threading.Thread(target=send, args=(0,))
    leader.start()
    assert first_started.wait(10)
    followers = [threading.Thread(target=send, args=(i,)) for i in range(1, 11)]
    for t in followers:
        t.start()
    # Every follower is queued behind the commit in progress before it ends.
    for _ in range(2000):
        if group.waiting == 10:
            break
        threading.Event().wait(0.005)
    assert group.waiting == 10
    release.set()
    for t in [leader, *followers]:
        t.join(10)
    assert results == {i: f"r{i}" for i in range(11)}
    assert batches[0] == [0]
    assert sorted(batches[1]) == list(range(1, 11)) and len(batches) == 2


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_still_writes() -> None:
    calls = 0

    def write(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk full")
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(write)
    with pytest.raises(RuntimeError, match="disk full"):
        group.submit(1)
    assert group.submit(2) == 2


def test_a_write_that_returns_too_few_results_is_an_error_not_a_wrong_answer() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        group.submit(1)


def _delivery(key: str, project_id: int = 7) -> repo.Delivery:
    return repo.Delivery(key=key, action="TASKS_CREATED", project_id=project_id, payload={})


def test_record_deliveries_stores_once_and_ignores_projects_never_set_up(store: Store) -> None:
    with store.session() as session:
        repo.ensure_project(session, 7)
    with store.write_session() as session:
        first = repo.record_deliveries(
            session, [_delivery("a"), _delivery("a"), _delivery("b", project_id=8)]
        )
    with store.write_session() as session:
        again = repo.record_deliveries(session, [_delivery("a"), _delivery("c")])
    assert first == [True, False, None]
    assert again == [False, True]
    with store.session() as session:
        assert [e.delivery_key for e in repo.pending_events(session)] == ["a", "c"]
