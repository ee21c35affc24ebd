"""Group commit: concurrent webhook deliveries share one transaction, each caller its result."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from backend.store import repo
from backend.store.db import Store, begin_immediate
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


def _queued_behind_a_held_batch(
    group: GroupCommit[int, int],
    started: threading.Event,
    gate: threading.Event,
    items: Sequence[int],
) -> dict[int, BaseException | int]:
    """Submit item 0 (whose write sets ``started``, then waits for ``gate``), queue ``items``
    behind it while it is held, then release it; each item's result or error."""
    outcome: dict[int, BaseException | int] = {}

    def send(i: int) -> None:
        try:
            outcome[i] = group.submit(i)
        except Exception as exc:
            outcome[i] = exc

    first = threading.Thread(target=send, args=(0,))
    first.start()
    others = [threading.Thread(target=send, args=(i,)) for i in items]
    assert started.wait(10)
    for t in others:
        t.start()
    for _ in range(2000):
        if group.waiting == len(items):
            break
        threading.Event().wait(0.005)
    assert group.waiting == len(items)
    gate.set()
    for t in [first, *others]:
        t.join(10)
    return outcome


def test_one_bad_item_fails_alone_and_the_rest_of_its_batch_is_written() -> None:
    started, gate = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        if items == [0]:
            started.set()
            assert gate.wait(10)
        if 5 in items:
            raise ValueError("item 5 is malformed")
        batches.append(list(items))
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(write)
    outcome = _queued_behind_a_held_batch(group, started, gate, range(1, 9))
    assert isinstance(outcome.pop(5), ValueError)
    assert outcome == {i: i * 10 for i in range(9) if i != 5}
    # Split in halves, not item by item: 8 queued items take at most 2 * log2(8) writes.
    assert sorted(i for b in batches for i in b) == [i for i in range(9) if i != 5]
    assert len(batches) <= 1 + 2 * 3


def test_a_transient_error_fails_the_whole_batch_without_writing_items_apart() -> None:
    started, gate = threading.Event(), threading.Event()
    attempts: list[list[int]] = []

    class Busy(Exception):
        pass

    def write(items: Sequence[int]) -> list[int]:
        if items == [0]:
            started.set()
            assert gate.wait(10)
            return [0]
        attempts.append(list(items))
        raise Busy("database is locked")

    group: GroupCommit[int, int] = GroupCommit(write, transient=lambda exc: isinstance(exc, Busy))
    outcome = _queued_behind_a_held_batch(group, started, gate, range(1, 6))
    assert outcome[0] == 0
    assert all(isinstance(outcome[i], Busy) for i in range(1, 6))
    assert attempts == [[1, 2, 3, 4, 5]]


def test_a_batch_holds_at_most_max_bytes_and_a_larger_item_goes_alone() -> None:
    started, gate = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        if items == [0]:
            started.set()
            assert gate.wait(10)
        batches.append(list(items))
        return list(items)

    # Item i weighs i * 10 bytes; 25 bytes a batch.
    group: GroupCommit[int, int] = GroupCommit(write, max_bytes=25, size=lambda i: i * 10)
    outcome = _queued_behind_a_held_batch(group, started, gate, [1, 1, 3, 1])
    assert outcome == {0: 0, 1: 1, 3: 3}
    assert batches[0] == [0]
    assert all(sum(i * 10 for i in b) <= 25 or len(b) == 1 for b in batches)
    assert [3] in batches


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


def test_max_batch_or_max_bytes_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        GroupCommit(lambda items: list(items), max_batch=0)
    with pytest.raises(ValueError, match="max_bytes must be at least 1"):
        GroupCommit(lambda items: list(items), max_bytes=0)


def _delivery(key: str, project_id: int = 7) -> repo.Delivery:
    return repo.Delivery(key=key, action="TASKS_CREATED", project_id=project_id, payload={})


def test_record_deliveries_stores_once_and_ignores_projects_never_set_up(store: Store) -> None:
    with store.session() as session:
        repo.ensure_project(session, 7)
    with store.write_connection() as connection:
        first = repo.record_deliveries(
            connection, [_delivery("a"), _delivery("a"), _delivery("b", project_id=8)]
        )
    with store.write_connection() as connection:
        again = repo.record_deliveries(connection, [_delivery("a"), _delivery("c")])
    assert first == [True, False, None]
    assert again == [False, True]
    with store.session() as session:
        assert [e.delivery_key for e in repo.pending_events(session)] == ["a", "c"]


def test_record_deliveries_inserts_in_key_order_and_answers_in_arrival_order(
    store: Store,
) -> None:
    with store.session() as session:
        repo.ensure_project(session, 7)
    with store.write_connection() as connection:
        outcomes = repo.record_deliveries(
            connection,
            [_delivery("c"), _delivery("a"), _delivery("x", project_id=8), _delivery("b")],
        )
    assert outcomes == [True, True, None, True]
    with store.session() as session:  # inbox ids follow the order the rows were inserted in
        assert [e.delivery_key for e in repo.pending_events(session)] == ["a", "b", "c"]


def test_record_deliveries_trusts_known_projects_and_asks_for_the_others(store: Store) -> None:
    with store.session() as session:
        repo.ensure_project(session, 7)
    with store.write_connection() as connection:
        # 9 was never set up: named as known by the caller, it is not read and is stored
        outcomes = repo.record_deliveries(
            connection,
            [_delivery("a", project_id=9), _delivery("b"), _delivery("c", project_id=8)],
            known_projects={9},
        )
    assert outcomes == [True, True, None]
    with store.session() as session:
        assert [e.delivery_key for e in repo.pending_events(session)] == ["a", "b"]


def _handover(holder: Store, waiter: Store, hold: float, pause: float) -> bool:
    """Whether a writer polling for the lock got it in the holder's ``pause`` between committing
    and beginning again (the holder then waits for it), rather than after the holder's next turn."""
    took: list[float] = []
    with holder.engine.connect() as held:
        begin_immediate(held, 1.0)

        def wait() -> None:
            with waiter.engine.connect() as connection:
                begin_immediate(connection, 5.0)
                took.append(time.monotonic())
                connection.rollback()

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(hold)  # the waiter has been polling for a while (SQLite's sleeps are long now)
        held.rollback()
        time.sleep(pause)
        begin_immediate(held, 5.0)  # begins again: the waiter should already hold the lock
        again = time.monotonic()
        held.rollback()
        thread.join(5)
    return bool(took) and took[0] < again


def test_begin_immediate_takes_the_lock_in_the_other_writers_first_pause(tmp_path: Path) -> None:
    """A writer of another connection that commits and begins again after a short pause (as the
    inbox applier does) lets a waiting writer in during that pause, not after SQLite's busy sleeps
    (50-100 ms apart after a quarter of a second of waiting: a 20 ms window caught one time in
    five at best; polling every 50 or 100 ms fails this test). Five handovers, at least four
    caught: a loaded machine may delay the waiting thread past one window."""
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    holder, waiter = Store(url), Store(url)
    # Holds of different lengths, so no polling period lines up with the window by chance.
    caught = [_handover(holder, waiter, 0.25 + 0.017 * i, 0.02) for i in range(5)]
    assert sum(caught) >= 4, caught
    holder.dispose()
    waiter.dispose()


def test_begin_immediate_gives_up_after_its_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    holder, waiter = Store(url), Store(url)
    with holder.engine.connect() as held, waiter.engine.connect() as connection:
        begin_immediate(held, 1.0)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            begin_immediate(connection, 0.1)
        assert 0.09 < time.monotonic() - started < 1.0
        held.rollback()
        begin_immediate(connection, 0.1)  # the connection is still usable
        connection.rollback()
    holder.dispose()
    waiter.dispose()
