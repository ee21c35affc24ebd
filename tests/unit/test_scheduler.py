"""Triggers and the scheduler, with real APScheduler on a real SQLite store.

Where time matters the scheduler is started paused and driven by a controllable clock, so what is
asserted is where jobs are set, never how long anything took. Runs that must really happen use the
real clock and wait on events with a generous timeout.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from backend.loop.contract import CycleContext, CycleResult, LeaseLost
from backend.loop.inbox import ApplyReport
from backend.runtime.lease import run_cycle_once
from backend.runtime.process import run_scheduler_process
from backend.runtime.scheduler import (
    DebounceDecision,
    LoopScheduler,
    changes_per_project,
    debounce,
    start_embedded_scheduler,
)
from backend.settings import LoopSettings, Settings, SettingsError, load_settings, with_overrides
from backend.store import cycle_records, repo
from backend.store.db import Store
from backend.store.models import LoopState, Project

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
FAST = LoopSettings(
    retrain_after=3,
    debounce_s=30.0,
    max_delay_s=100.0,
    schedule_interval_minutes=None,
    poll_s=0.2,
    lease_s=30.0,
)


def secs(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += secs(seconds)


class FakeCycle:
    """A cycle that records its calls, can block until released and can fail on demand."""

    def __init__(self, *, block: bool = False, failures: list[Exception] | None = None) -> None:
        self.calls: list[tuple[int, str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.failures = list(failures or [])
        self._lock = threading.Lock()
        self.active = self.max_active = 0

    def __call__(self, ctx: CycleContext, project_id: int) -> CycleResult:
        with self._lock:
            self.calls.append((project_id, ctx.trigger))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            with ctx.stage("train") as counts:
                counts["labels"] = 3
                self.started.set()
                self.release.wait(10)
                if self.failures:
                    raise self.failures.pop(0)
            return CycleResult(model_version=f"v{len(self.calls)}", metrics={"accuracy": 0.5})
        finally:
            with self._lock:
                self.active -= 1


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def state_of(store: Store, project_id: int) -> str:
    with store.session() as s:
        return cycle_records.current_state(s, project_id, now=datetime.now(UTC)).state


def history(store: Store, project_id: int) -> list[dict[str, Any]]:
    with store.session() as s:
        return [cycle_records.to_dict(c) for c in cycle_records.history(s, project_id)]


def report(
    applied: dict[tuple[int | None, str], int], train: set[int] | None = None
) -> ApplyReport:
    return ApplyReport(applied=Counter(applied), train_requested=set(train or ()))


@pytest.fixture
def loops(store: Store) -> Iterator[Callable[..., LoopScheduler]]:
    """Build and start schedulers on the test store; all are shut down (threads joined) after."""
    made: list[LoopScheduler] = []

    def make(
        runner: FakeCycle,
        *,
        settings: LoopSettings = FAST,
        clock: Callable[[], datetime] | None = None,
        paused: bool = False,
        on: Store | None = None,
        **kwargs: Any,
    ) -> LoopScheduler:
        loop = LoopScheduler(
            on or store, runner, settings, clock=clock or (lambda: datetime.now(UTC)), **kwargs
        )
        made.append(loop)
        loop.start(paused=paused)
        return loop

    yield make
    for loop in made:
        loop.shutdown()


# ---------------------------------------------------------------- pure trigger logic


def test_debounce_waits_for_n_changes_then_a_quiet_period_capped_by_max_delay() -> None:
    assert debounce(2, None, now=T0, settings=FAST) is None
    first = debounce(3, None, now=T0, settings=FAST)
    assert first == DebounceDecision(triggered_at=T0, due_at=T0 + secs(30))
    pushed = debounce(4, T0, now=T0 + secs(20), settings=FAST)
    assert pushed == DebounceDecision(triggered_at=T0, due_at=T0 + secs(50))
    capped = debounce(9, T0, now=T0 + secs(90), settings=FAST)
    assert capped is not None and capped.due_at == T0 + secs(100)
    overdue = debounce(12, T0, now=T0 + secs(150), settings=FAST)
    assert overdue is not None and overdue.due_at == T0 + secs(100)  # in the past: run at once


def test_only_annotation_events_count_as_changes() -> None:
    counted = changes_per_project(
        report(
            {
                (1, "ANNOTATION_CREATED"): 2,
                (1, "ANNOTATION_UPDATED"): 1,
                (2, "ANNOTATIONS_DELETED"): 1,
                (2, "TASKS_CREATED"): 5,
                (3, "PROJECT_UPDATED"): 1,
                (None, "ANNOTATION_CREATED"): 4,
            }
        )
    )
    assert counted == {1: 3, 2: 1}


def test_loop_settings_are_validated_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match=r"loop\.schedule_cron"):
        load_settings(environ={"LABELLOOP_LOOP__SCHEDULE_CRON": "0 */6 * *"})
    with pytest.raises(SettingsError, match="max_delay_s"):
        load_settings(environ={"LABELLOOP_LOOP__MAX_DELAY_S": "5"})
    cron = load_settings(environ={"LABELLOOP_LOOP__SCHEDULE_CRON": "0 */6 * * *"})
    assert cron.loop.schedule_cron == "0 */6 * * *"


# ---------------------------------------------------------------- triggers


def test_n_changes_schedule_one_cycle_pushed_back_but_not_beyond_max_delay(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    clock = Clock(T0)
    loop = loops(FakeCycle(), clock=clock, paused=True)
    loop.on_applied(report({(1, "ANNOTATION_CREATED"): 2, (2, "TASKS_CREATED"): 9}))
    assert loop.next_run(1) is None
    assert (state_of(store, 1), state_of(store, 2)) == ("idle", "idle")

    clock.advance(5)
    loop.on_applied(report({(1, "ANNOTATION_UPDATED"): 1}))  # the third change
    assert loop.next_run(1) == T0 + secs(35)
    clock.advance(20)
    loop.on_applied(report({(1, "ANNOTATIONS_DELETED"): 1}))
    assert loop.next_run(1) == T0 + secs(55)  # pushed back by the quiet period
    clock.advance(70)
    loop.on_applied(report({(1, "ANNOTATION_CREATED"): 1}))
    assert loop.next_run(1) == T0 + secs(105)  # capped: threshold reached at T0+5, plus 100 s

    [queued] = history(store, 1)
    assert (queued["state"], queued["trigger"]) == ("queued", "debounce")
    assert queued["due_at"] == (T0 + secs(105)).isoformat()
    assert loop.next_run(2) is None


def test_start_training_runs_at_once(store: Store, loops: Callable[..., LoopScheduler]) -> None:
    clock = Clock(datetime.now(UTC))
    runner = FakeCycle()
    loop = loops(runner, clock=clock, paused=True)
    loop.on_applied(report({}, train={7}))
    assert loop.next_run(7) == clock.now  # due now, no quiet period

    loop.resume()
    wait_for(lambda: state_of(store, 7) == "idle" and bool(runner.calls))
    assert runner.calls == [(7, "start_training")]
    [done] = history(store, 7)
    assert (done["state"], done["trigger"], done["model_version"]) == (
        "succeeded",
        "start_training",
        "v1",
    )
    assert set(done["stage_timings"]) == {"train"}
    assert done["counts"] == {"train": {"labels": 3}}


def test_many_triggers_coalesce_into_one_run(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    clock = Clock(datetime.now(UTC))
    runner = FakeCycle()
    loop = loops(runner, clock=clock, paused=True)
    ids = {loop.request(1) for _ in range(3)}
    loop.on_applied(report({(1, "ANNOTATION_CREATED"): 5}, train={1}))
    ids.add(loop.request(1, "schedule"))
    assert len(ids) == 1
    assert [c["state"] for c in history(store, 1)] == ["queued"]

    loop.resume()
    wait_for(lambda: bool(history(store, 1)) and history(store, 1)[0]["state"] == "succeeded")
    assert runner.calls == [(1, "manual")]
    assert loop.next_run(1) is None  # nothing left that could run it again
    with store.session() as s:
        assert cycle_records.queued_cycle(s, 1) is None
        assert cycle_records.loop_state(s, 1).changes == 0


def test_never_two_cycles_of_one_project_at_once(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    runner = FakeCycle(block=True)
    loop = loops(runner)
    loop.request(1)
    assert runner.started.wait(10)
    loop.request(1)  # while it runs: one follow-up is queued...
    loop.request(1, "start_training")  # ...and further requests fold into it
    # Another process (``labelloop cycle``) is refused by the lease, not run alongside.
    assert run_cycle_once(store, runner, 1, trigger="manual") is None
    with store.session() as s:
        status = cycle_records.current_state(s, 1, now=datetime.now(UTC))
    assert (status.state, status.stage, status.queued_next) == ("running", "train", True)

    runner.release.set()
    wait_for(lambda: len(runner.calls) == 2 and state_of(store, 1) == "idle")
    assert runner.max_active == 1
    assert runner.calls == [(1, "manual"), (1, "manual")]
    assert [c["state"] for c in history(store, 1)] == ["succeeded", "succeeded"]


def test_a_failed_cycle_is_recorded_and_the_next_one_succeeds(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    runner = FakeCycle(failures=[RuntimeError("embedding cache unreadable")])
    loop = loops(runner)
    loop.request(1)
    wait_for(lambda: state_of(store, 1) == "failed")
    with store.session() as s:
        failed = cycle_records.current_state(s, 1, now=datetime.now(UTC))
    assert failed.error == "in stage train: RuntimeError: embedding cache unreadable"

    loop.request(1)
    wait_for(lambda: state_of(store, 1) == "idle")
    latest, first = history(store, 1)
    assert (latest["state"], latest["model_version"], latest["error"]) == ("succeeded", "v2", None)
    assert (first["state"], first["model_version"]) == ("failed", None)
    assert "train" in first["stage_timings"]  # the failing stage's time is kept


def test_jobs_survive_a_restart(store: Store, loops: Callable[..., LoopScheduler]) -> None:
    settings = FAST.model_copy(update={"retrain_after": 1, "debounce_s": 0.5})
    runner = FakeCycle()
    # A clock that stands still between the calls: a slow database (PostgreSQL on a loaded
    # machine) must not move the due time the test compares.
    clock = Clock(datetime.now(UTC))
    first = loops(runner, settings=settings, paused=True, clock=clock)
    due = first.note_changes(1, 1)
    assert due is not None and first.next_run(1) == due
    first.shutdown()

    reopened = Store(store.url)  # a new process on the same database
    try:
        second = loops(runner, settings=settings, paused=True, on=reopened, clock=clock)
        assert second.next_run(1) == due
        clock.advance(1.0)  # the debounce is over when the job fires
        second.resume()
        wait_for(lambda: state_of(store, 1) == "idle" and bool(runner.calls))
        assert runner.calls == [(1, "debounce")]
    finally:
        second.shutdown()
        reopened.dispose()


def test_cycles_requested_by_another_process_are_picked_up(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    runner = FakeCycle()
    loops(runner)
    with store.session() as s:  # what an API worker without a scheduler does
        now = datetime.now(UTC)
        cycle_records.request(s, 4, "manual", due_at=now, now=now)
    wait_for(lambda: state_of(store, 4) == "idle" and bool(runner.calls))
    assert runner.calls == [(4, "manual")]


def test_schedules_follow_per_project_settings_and_request_cycles(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    with store.session() as s:
        s.add_all(Project(id=pid, labels=[], settings={}) for pid in (1, 2, 3))
    per_project = {
        1: FAST.model_copy(update={"schedule_interval_minutes": 60}),
        2: FAST.model_copy(update={"schedule_cron": "0 */6 * * *"}),
        3: FAST,
    }
    loop = loops(FakeCycle(), paused=True, settings_for=per_project.__getitem__)
    interval, cron = loop.schedule_of(1), loop.schedule_of(2)
    assert interval is not None and isinstance(interval[0], IntervalTrigger)
    assert interval[0].interval == timedelta(minutes=60)
    assert cron is not None and isinstance(cron[0], CronTrigger)
    assert "hour='*/6'" in str(cron[0])
    assert loop.schedule_of(3) is None

    loop.sync_schedules()  # unchanged settings keep the stored job and its phase
    again = loop.schedule_of(1)
    assert again is not None and again[1] == interval[1]
    loop.run_scheduled(1)
    [queued] = history(store, 1)
    assert (queued["state"], queued["trigger"]) == ("queued", "schedule")
    assert loop.next_run(1) is not None


def test_a_schedule_keeps_its_phase_across_a_restart_and_runs_what_it_missed(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    with store.session() as s:
        s.add(Project(id=1, labels=[], settings={}))
    hourly = FAST.model_copy(update={"schedule_interval_minutes": 60})
    first = loops(FakeCycle(), settings=hourly, paused=True)
    scheduled = first.schedule_of(1)
    assert scheduled is not None
    first.shutdown()

    time.sleep(0.01)  # a new process starts later: the next run stays where it was
    reopened = Store(store.url)
    try:
        second = loops(FakeCycle(), settings=hourly, paused=True, on=reopened)
        again = second.schedule_of(1)
        assert again is not None and again[1] == scheduled[1]
        second.shutdown()
    finally:
        reopened.dispose()

    # Down past the next run: the new process fires the missed run once, then keeps the phase.
    with store.session() as s:
        state = s.get(LoopState, 1)
        assert state is not None and state.schedule_next_at == scheduled[1]
        state.schedule_next_at = datetime.now(UTC) - timedelta(seconds=1)
    runner = FakeCycle()
    third = loops(runner, settings=hourly.model_copy(update={"misfire_grace_s": 60}))
    wait_for(lambda: bool(runner.calls))
    assert runner.calls == [(1, "schedule")]
    wait_for(lambda: _stored_next(store, 1) > datetime.now(UTC))
    resumed = third.schedule_of(1)
    assert resumed is not None and resumed[1] == _stored_next(store, 1)


def _stored_next(store: Store, project_id: int) -> datetime:
    with store.session() as s:
        state = s.get(LoopState, project_id)
        assert state is not None and state.schedule_next_at is not None
        return state.schedule_next_at


def test_dropping_a_schedule_forgets_its_phase(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    with store.session() as s:
        s.add(Project(id=1, labels=[], settings={}))
    settings = {1: FAST.model_copy(update={"schedule_cron": "0 3 * * *"})}
    loop = loops(FakeCycle(), paused=True, settings_for=settings.__getitem__)
    assert loop.schedule_of(1) is not None
    with store.session() as s:
        assert s.get(LoopState, 1).schedule is not None  # type: ignore[union-attr]
    settings[1] = FAST
    loop.sync_schedules()
    assert loop.schedule_of(1) is None
    with store.session() as s:
        state = s.get(LoopState, 1)
        assert state is not None and (state.schedule, state.schedule_next_at) == (None, None)


# ---------------------------------------------------------------- the lease while running


def test_the_heartbeat_keeps_the_lease_of_a_long_cycle(store: Store) -> None:
    refused: list[bool] = []

    def long_cycle(ctx: CycleContext, project_id: int) -> None:
        time.sleep(1.0)  # far longer than the 0.3 s lease: only heartbeats keep it
        with store.session() as s:
            refused.append(
                not cycle_records.acquire_lease(
                    s, project_id, "other", now=datetime.now(UTC), ttl_s=1
                )
            )

    run = run_cycle_once(store, long_cycle, 1, trigger="manual", lease_s=0.3)
    assert run is not None and run.state == "succeeded"
    assert refused == [True]
    with store.session() as s:
        assert s.get(LoopState, 1) is not None and s.get(LoopState, 1).lease_owner is None  # type: ignore[union-attr]


def test_a_cycle_whose_lease_was_taken_over_stops_and_is_recorded(store: Store) -> None:
    def stolen(ctx: CycleContext, project_id: int) -> None:
        with store.session() as s:  # as if our lease had expired and another process took it
            s.get(LoopState, project_id).lease_owner = "thief"  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ctx.progress(1, 10)
            time.sleep(0.02)

    run = run_cycle_once(store, stolen, 1, trigger="manual", lease_s=0.2)
    assert run is not None and run.state == "failed"
    assert run.error is not None and LeaseLost.__name__ in run.error
    with store.session() as s:
        assert s.get(LoopState, 1).lease_owner == "thief"  # type: ignore[union-attr]


# ---------------------------------------------------------------- processes


def test_embedded_scheduler_only_when_configured(settings: Settings, store: Store) -> None:
    off = with_overrides(settings, {"loop": {"run_scheduler": False}})
    assert start_embedded_scheduler(off, store, FakeCycle()) is None
    on = start_embedded_scheduler(settings, store, FakeCycle())
    assert on is not None
    on.shutdown()


def test_scheduler_process_applies_the_inbox_and_runs_start_training(
    settings: Settings, store: Store
) -> None:
    with store.session() as s:
        repo.ensure_project(s, 9)  # set up (only such projects' events are applied)
        repo.record_delivery(
            s, key="k1", action="START_TRAINING", project_id=9, payload={"action": "START_TRAINING"}
        )
    fast = with_overrides(settings, {"loop": {"poll_s": 0.1, "schedule_interval_minutes": None}})
    runner, stop = FakeCycle(), threading.Event()
    process = threading.Thread(
        target=run_scheduler_process, args=(fast, lambda _s, _st: runner), kwargs={"stop": stop}
    )
    process.start()
    try:
        wait_for(lambda: state_of(store, 9) == "idle" and bool(runner.calls))
    finally:
        stop.set()
        process.join()
    assert runner.calls == [(9, "start_training")]
    with store.session() as s:
        assert repo.pending_events(s) == []


def test_annotation_changes_run_the_queue_top_up_on_a_worker_thread(
    store: Store, loops: Callable[..., LoopScheduler]
) -> None:
    topped: list[tuple[int, str]] = []
    done = threading.Event()

    def refill(project_id: int) -> None:
        topped.append((project_id, threading.current_thread().name))
        done.set()

    loop = loops(FakeCycle(), refill=refill)
    loop.on_applied(report({(5, "ANNOTATION_CREATED"): 1}))
    assert done.wait(10)
    assert [project for project, _ in topped] == [5]
    assert topped[0][1] != threading.current_thread().name
    with store.session() as s:  # one change is below retrain_after: no cycle, only the top-up
        assert cycle_records.queued_cycle(s, 5) is None
