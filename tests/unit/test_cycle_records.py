"""Cycle records, the debounce counter and the per-project lease, on a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import inspect

from backend.store import cycle_records
from backend.store.db import Store, alembic_config

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_migration_adds_and_removes_the_tables(store: Store) -> None:
    assert {"cycles", "loop_state"} <= set(inspect(store.engine).get_table_names())
    command.downgrade(alembic_config(store.engine), "0001")
    assert not {"cycles", "loop_state"} & set(inspect(store.engine).get_table_names())
    store.upgrade()
    assert {"cycles", "loop_state"} <= set(inspect(store.engine).get_table_names())


def test_requests_fold_into_one_queued_cycle(store: Store) -> None:
    with store.session() as s:
        first = cycle_records.request(s, 1, "debounce", due_at=at(30), now=at(0))
        pushed = cycle_records.request(s, 1, "debounce", due_at=at(50), now=at(20))
        assert (pushed.id, pushed.due_at) == (first.id, at(50))  # debounce pushes itself back
        manual = cycle_records.request(s, 1, "manual", due_at=at(25), now=at(25))
        assert (manual.id, manual.trigger, manual.due_at) == (first.id, "manual", at(25))
        later = cycle_records.request(s, 1, "debounce", due_at=at(60), now=at(26))
        assert (later.trigger, later.due_at) == ("manual", at(25))  # never later than a manual
        other = cycle_records.request(s, 2, "schedule", due_at=at(0), now=at(0))
        assert other.id != first.id
    with store.session() as s:
        assert [(c.project_id, c.state) for c in cycle_records.queued_cycles(s)] == [
            (1, "queued"),
            (2, "queued"),
        ]
        assert cycle_records.queued_cycle(s, 1) is not None
        assert cycle_records.current_state(s, 1, now=at(30)).to_dict()["state"] == "queued"


def test_start_takes_the_queued_cycle_and_resets_the_counter(store: Store) -> None:
    with store.session() as s:
        assert cycle_records.add_changes(s, 1, 3).changes == 3
        assert cycle_records.add_changes(s, 1, 4).changes == 7
        cycle_records.loop_state(s, 1).triggered_at = at(0)
        queued = cycle_records.request(s, 1, "debounce", due_at=at(30), now=at(0))
        assert (
            cycle_records.start(s, 2, trigger=None, now=at(1)) is None
        )  # nothing waits for project 2
        assert cycle_records.acquire_lease(s, 1, "me", now=at(30), ttl_s=60)
        running = cycle_records.start(s, 1, trigger=None, now=at(30))
        assert running is not None and running.id == queued.id
        assert (running.state, running.started_at, running.due_at) == ("running", at(30), None)
        state = cycle_records.loop_state(s, 1)
        assert (state.changes, state.triggered_at, state.lease_cycle_id) == (0, None, queued.id)
        assert cycle_records.queued_cycle(s, 1) is None


def test_a_manual_start_records_its_trigger_without_a_queued_cycle(store: Store) -> None:
    with store.session() as s:
        assert cycle_records.acquire_lease(s, 5, "cli", now=at(0), ttl_s=60)
        cycle = cycle_records.start(s, 5, trigger="manual", now=at(0))
        assert cycle is not None and (cycle.trigger, cycle.state) == ("manual", "running")


def test_the_lease_is_exclusive_until_released_or_expired(store: Store) -> None:
    with store.session() as s:
        assert cycle_records.acquire_lease(s, 1, "a", now=at(0), ttl_s=60)
        assert not cycle_records.acquire_lease(s, 1, "b", now=at(10), ttl_s=60)
        assert cycle_records.acquire_lease(
            s, 2, "b", now=at(10), ttl_s=60
        )  # other projects are free
        assert cycle_records.renew_lease(s, 1, "a", now=at(50), ttl_s=60)  # now held until 110
        assert not cycle_records.acquire_lease(s, 1, "b", now=at(100), ttl_s=60)
        assert not cycle_records.renew_lease(s, 1, "b", now=at(100), ttl_s=60)
        cycle_records.release_lease(s, 1, "b")  # not the holder: no effect
        assert not cycle_records.acquire_lease(s, 1, "b", now=at(100), ttl_s=60)
        cycle_records.release_lease(s, 1, "a")
        assert cycle_records.acquire_lease(s, 1, "b", now=at(101), ttl_s=60)
        assert cycle_records.acquire_lease(s, 1, "c", now=at(200), ttl_s=60)  # b's lease expired
        assert not cycle_records.renew_lease(s, 1, "b", now=at(201), ttl_s=60)


def _running(store: Store, project_id: int, owner: str, now: datetime) -> int:
    with store.session() as s:
        cycle_records.request(s, project_id, "manual", due_at=now, now=now)
        assert cycle_records.acquire_lease(s, project_id, owner, now=now, ttl_s=60)
        cycle = cycle_records.start(s, project_id, trigger=None, now=now)
        assert cycle is not None
        return cycle.id


def test_a_crashed_holder_is_reaped_as_interrupted(store: Store) -> None:
    cycle_id = _running(store, 1, "crashed", at(0))
    with store.session() as s:
        assert cycle_records.reap_interrupted(s, now=at(30)) == []  # lease still alive
        assert cycle_records.current_state(s, 1, now=at(30)).state == "running"
        # Past the lease: read as failed even before anyone reaps it.
        late = cycle_records.current_state(s, 1, now=at(61))
        assert (late.state, late.error) == ("failed", cycle_records.INTERRUPTED)
        assert cycle_records.reap_interrupted(s, now=at(61)) == [cycle_id]
    with store.session() as s:
        [cycle] = cycle_records.history(s, 1)
        assert (cycle.state, cycle.error, cycle.finished_at) == (
            "failed",
            cycle_records.INTERRUPTED,
            at(61),
        )
        assert cycle_records.loop_state(s, 1).lease_owner is None
        assert cycle_records.acquire_lease(s, 1, "next", now=at(62), ttl_s=60)
        # The crashed holder comes back: its late outcome does not overwrite the record.
        assert not cycle_records.succeed(s, cycle_id, now=at(63))
        assert not cycle_records.fail(s, cycle_id, "late", now=at(63))
        assert cycle_records.history(s, 1)[0].error == cycle_records.INTERRUPTED


def test_a_running_cycle_without_its_lease_is_reaped(store: Store) -> None:
    cycle_id = _running(store, 1, "gone", at(0))
    with store.session() as s:
        cycle_records.release_lease(s, 1, "gone")  # e.g. the process died after releasing
        assert cycle_records.reap_interrupted(s, now=at(1)) == [cycle_id]


def test_stages_progress_and_outcome_are_recorded(store: Store) -> None:
    cycle_id = _running(store, 3, "me", at(0))
    with store.session() as s:
        cycle_records.enter_stage(s, cycle_id, "train")
        cycle_records.set_progress(s, cycle_id, 5, 10)
        status = cycle_records.current_state(s, 3, now=at(1))
        assert (status.state, status.stage, status.progress) == (
            "running",
            "train",
            {"done": 5, "total": 10},
        )
        cycle_records.end_stage(s, cycle_id, "train", seconds=1.23456, counts={"labels": 40})
        assert cycle_records.succeed(
            s, cycle_id, now=at(2), model_version="v1", metrics={"acc": 0.9}
        )
    with store.session() as s:
        record = cycle_records.to_dict(cycle_records.history(s, 3)[0])
        assert record["state"] == "succeeded"
        assert record["stage_timings"] == {"train": 1.235}
        assert record["counts"] == {"train": {"labels": 40}}
        assert (record["model_version"], record["metrics"]) == ("v1", {"acc": 0.9})
        assert record["progress"] is None
        assert record["finished_at"] == at(2).isoformat()
        assert cycle_records.current_state(s, 3, now=at(3)).state == "idle"


def test_current_state_reports_the_last_failure_until_a_success(store: Store) -> None:
    with store.session() as s:
        assert cycle_records.current_state(s, 4, now=at(0)).state == "idle"
    first = _running(store, 4, "me", at(0))
    with store.session() as s:
        assert cycle_records.fail(s, first, "in stage push: HTTPError: 500", now=at(1))
        cycle_records.release_lease(s, 4, "me")
        failed = cycle_records.current_state(s, 4, now=at(2))
        assert (failed.state, failed.error) == ("failed", "in stage push: HTTPError: 500")
    second = _running(store, 4, "me", at(3))
    with store.session() as s:
        cycle_records.request(s, 4, "debounce", due_at=at(40), now=at(4))
        running = cycle_records.current_state(s, 4, now=at(4))
        assert (running.state, running.cycle_id, running.queued_next) == ("running", second, True)
        assert cycle_records.succeed(s, second, now=at(5))
        assert cycle_records.current_state(s, 4, now=at(6)).state == "queued"
        states = [(c.state, c.trigger) for c in cycle_records.history(s, 4)]
        assert states == [("queued", "debounce"), ("succeeded", "manual"), ("failed", "manual")]
        assert len(cycle_records.history(s, 4, limit=2)) == 2
