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


def test_an_interrupted_writer_stops_only_itself_and_the_next_batch_still_writes() -> None:
    started, release = threading.Event(), threading.Event()
    calls = 0

    def write(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            assert release.wait(10)
            raise KeyboardInterrupt
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(write)
    outcome: dict[str, BaseException | int] = {}

    def leader() -> None:
        try:
            group.submit(1)
        except BaseException as exc:
            outcome["leader"] = exc

    def follower() -> None:
        try:
            outcome["follower"] = group.submit(2)
        except BaseException as exc:
            outcome["follower"] = exc

    first = threading.Thread(target=leader)
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=follower)
    second.start()
    for _ in range(2000):
        if group.waiting == 1:
            break
        threading.Event().wait(0.005)
    release.set()
    first.join(10)
    second.join(10)
    assert isinstance(outcome["leader"], KeyboardInterrupt)
    # The follower queued behind the interrupted batch, so it is written by its own thread.
    assert outcome["follower"] == 2
    assert group.submit(3) == 3


def test_a_caller_whose_item_is_past_max_batch_writes_older_batches_first() -> None:
    batches: list[list[int]] = []
    gate = threading.Event()

    def write(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            assert gate.wait(10)
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(write, max_batch=2)
    results: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.update({i: group.submit(i)})) for i in range(7)
    ]
    threads[0].start()
    for _ in range(2000):
        if batches:
            break
        threading.Event().wait(0.005)
    for t in threads[1:]:
        t.start()
    for _ in range(2000):
        if group.waiting == 6:
            break
        threading.Event().wait(0.005)
    gate.set()
    for t in threads:
        t.join(10)
    assert results == {i: i for i in range(7)}
    assert batches[0] == [0]
    assert all(len(b) <= 2 for b in batches) and sorted(i for b in batches for i in b) == list(
        range(7)
    )


def test_max_batch_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(lambda items: list(items), max_batch=0)


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
