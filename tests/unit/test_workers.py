"""``loop.executor: rq``: the scheduler queues due cycles in a REAL Redis, workers run them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from backend.cli.main import main
from backend.runtime.scheduler import LoopScheduler, cycle_dispatch
from backend.runtime.workers import connect, enqueue_cycle, job_id, run_project_cycle, run_worker
from backend.settings import Settings, SettingsError, load_settings
from backend.store import cycle_records
from backend.store.db import Store
from backend.store.project_settings import set_project_settings
from tests.conftest import make_settings, upgraded_store
from tests.unit.test_scheduler import Clock, FakeCycle, history, state_of


@pytest.fixture
def rq_settings(tmp_path: Path, redis_url: str) -> Settings:
    Redis.from_url(redis_url).flushdb()
    return make_settings(tmp_path, loop={"executor": "rq", "redis_url": redis_url, "poll_s": 0.5})


@pytest.fixture
def rq_store(rq_settings: Settings) -> Iterator[Store]:
    yield from upgraded_store(rq_settings)


def _queue(settings: Settings) -> Queue:
    return Queue(settings.loop.rq_queue, connection=connect(settings))


def _request(store: Store, project_id: int, trigger: str = "manual") -> int:
    now = datetime.now(UTC)
    with store.session() as session:
        return cycle_records.request(session, project_id, trigger, due_at=now, now=now).id


def _work(settings: Settings, runner: FakeCycle) -> None:
    run_worker(settings, lambda _settings, _store: runner, burst=True, fork=False, listen=False)


def test_the_scheduler_queues_a_due_cycle_and_a_worker_runs_it(
    rq_settings: Settings, rq_store: Store
) -> None:
    in_scheduler = FakeCycle()  # with executor rq the scheduler itself never runs a cycle
    clock = Clock(datetime.now(UTC))
    dispatch = cycle_dispatch(rq_settings)
    assert dispatch is not None
    loop = LoopScheduler(rq_store, in_scheduler, rq_settings.loop, clock=clock, dispatch=dispatch)
    loop.start(paused=True)
    try:
        loop.request(7, "manual")
        loop.run_due(7)
        queue = _queue(rq_settings)
        assert queue.job_ids == [job_id(rq_settings, 7)]
        assert state_of(rq_store, 7) == "queued"  # the record waits until a worker takes it
        assert loop.next_run(7) == clock.now + timedelta(seconds=0.5)  # offered again later
        loop.run_due(7)  # while the job waits, a second due pass adds nothing
        assert queue.count == 1
    finally:
        loop.shutdown()
    worker_cycle = FakeCycle()
    _work(rq_settings, worker_cycle)
    assert in_scheduler.calls == []
    assert worker_cycle.calls == [(7, "manual")]
    [done] = history(rq_store, 7)
    assert (done["state"], done["model_version"]) == ("succeeded", "v1")
    assert queue.count == 0


def test_one_waiting_job_per_project_then_a_new_one_after_it_ran(
    rq_settings: Settings, rq_store: Store
) -> None:
    redis = connect(rq_settings)
    _request(rq_store, 7)
    assert enqueue_cycle(rq_settings, redis, 7) is True
    assert enqueue_cycle(rq_settings, redis, 7) is False
    assert enqueue_cycle(rq_settings, redis, 8) is True
    assert _queue(rq_settings).count == 2
    runner = FakeCycle()
    _work(rq_settings, runner)
    assert runner.calls == [(7, "manual")]  # project 8 had no queued cycle: nothing to run
    _request(rq_store, 7, "schedule")
    assert enqueue_cycle(rq_settings, redis, 7) is True  # the finished job is no obstacle
    _work(rq_settings, runner)
    assert [c[1] for c in runner.calls] == ["manual", "schedule"]


def test_a_failing_cycle_is_recorded_and_the_job_reports_it(
    rq_settings: Settings, rq_store: Store
) -> None:
    cycle_id = _request(rq_store, 7)
    enqueue_cycle(rq_settings, connect(rq_settings), 7)
    _work(rq_settings, FakeCycle(failures=[RuntimeError("GPU on fire")]))
    [failed] = history(rq_store, 7)
    assert failed["state"] == "failed" and "GPU on fire" in failed["error"]
    job = _queue(rq_settings).fetch_job(job_id(rq_settings, 7))
    assert job is not None
    assert job.return_value() == {
        "project": 7,
        "cycle": cycle_id,
        "state": "failed",
        "error": failed["error"],
    }


def test_a_project_whose_lease_is_held_is_skipped_and_stays_queued(
    rq_settings: Settings, rq_store: Store
) -> None:
    _request(rq_store, 7)
    with rq_store.session() as session:
        assert cycle_records.acquire_lease(
            session, 7, "labelloop cycle (CLI)", now=datetime.now(UTC), ttl_s=60
        )
    enqueue_cycle(rq_settings, connect(rq_settings), 7)
    runner = FakeCycle()
    _work(rq_settings, runner)
    assert runner.calls == []
    assert state_of(rq_store, 7) == "queued"
    job = _queue(rq_settings).fetch_job(job_id(rq_settings, 7))
    assert job is not None and job.return_value() == {"project": 7, "state": "skipped"}


def test_a_job_outside_a_worker_is_refused() -> None:
    with pytest.raises(RuntimeError, match="labelloop worker"):
        run_project_cycle(7)


def test_rq_settings_are_checked_and_stay_process_wide(tmp_path: Path, store: Store) -> None:
    with pytest.raises(SettingsError, match=r"loop\.redis_url"):
        load_settings(environ={"LABELLOOP_LOOP__EXECUTOR": "rq"})
    with pytest.raises(SettingsError, match="redis://"):
        load_settings(environ={"LABELLOOP_LOOP__REDIS_URL": "http://127.0.0.1:6379"})
    settings = make_settings(tmp_path)
    assert cycle_dispatch(settings) is None  # threads: the scheduler runs cycles itself
    with pytest.raises(SettingsError, match=r"loop\.executor"):
        set_project_settings(store, settings, 7, {"loop": {"executor": "rq"}}, token_name="x")


def _config(tmp_path: Path, **loop: Any) -> Path:
    lines = ["store:", f"  data_dir: {tmp_path / 'data'}", "loop:" if loop else "loop: {}"]
    lines += [f"  {key}: {value}" for key, value in loop.items()]
    path = tmp_path / "worker.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_worker_command_needs_a_reachable_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(_config(tmp_path)), "worker", "--burst"]) == 2
    assert "needs loop.redis_url" in capsys.readouterr().err
    closed = f"redis://127.0.0.1:{_closed_port()}/0"
    assert main(["--config", str(_config(tmp_path, redis_url=closed)), "worker", "--burst"]) == 2
    assert "Redis at loop.redis_url" in capsys.readouterr().err


def _closed_port() -> int:
    from backend.cli.lsprocess import free_port

    return free_port()  # nothing listens there
