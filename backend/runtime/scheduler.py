"""When cycles run: triggers, the one scheduler of a deployment, and the wrapper around a cycle.

Four triggers ask for a project's cycle: N annotation changes (debounced), START_TRAINING, a
schedule (interval or cron) and a manual request. Each writes or joins the project's one *queued*
cycle record in the state database (:mod:`backend.store.cycle_records`), then sets the project's
single APScheduler job ``cycle:<project>`` to the record's due time. The record is the request;
the job is only the alarm clock. So triggers from other processes (an API worker, the CLI) are
never lost: the scheduler's housekeeping pass (every ``loop.poll_s``) gives every waiting record a
job.

When the job fires, :func:`backend.runtime.lease.run_cycle_once` runs the injected runner under
the project's lease (:mod:`backend.loop.contract` says what the runner sees and returns).

APScheduler keeps its jobs in memory, so a job can be a bound method of the scheduler that set
it. What must outlive a restart lives in the state database: the cycle records (the housekeeping
pass at start gives each waiting one its job again) and each recurring schedule's next run time
(``loop_state.schedule``/``schedule_next_at``), so a restart keeps a schedule's phase and a run
that fell due while the process was down still starts (within ``loop.misfire_grace_s``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from backend.loop.contract import CycleRunner, SettingsFor
from backend.loop.queue import make_refill
from backend.runtime.lease import Clock, run_cycle_once
from backend.runtime.workers import RQDispatch
from backend.settings import LoopSettings, Settings
from backend.store import cycle_records
from backend.store.db import Store
from backend.store.models import LoopState, Project, utcnow

if TYPE_CHECKING:
    from backend.loop.inbox import ApplyReport

log = logging.getLogger(__name__)

CHANGE_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"})


# ---------------------------------------------------------------- pure trigger logic


@dataclass(frozen=True)
class DebounceDecision:
    triggered_at: datetime  # when the count first reached retrain_after
    due_at: datetime  # when the cycle should start


def debounce(
    changes: int, triggered_at: datetime | None, *, now: datetime, settings: LoopSettings
) -> DebounceDecision | None:
    """When a project with ``changes`` changes since its last cycle should run, if at all.

    Below ``retrain_after`` nothing is due. From then on each change sets the start to
    ``now + debounce_s`` (a quiet period), but never later than ``max_delay_s`` after the moment the
    threshold was first reached, so a steady stream of annotations cannot postpone it for ever.
    """
    if changes < settings.retrain_after:
        return None
    first = triggered_at or now
    due = min(
        now + timedelta(seconds=settings.debounce_s),
        first + timedelta(seconds=settings.max_delay_s),
    )
    return DebounceDecision(triggered_at=first, due_at=due)


def changes_per_project(report: ApplyReport) -> dict[int, int]:
    """Annotation events per project in an inbox report (created, updated, deleted)."""
    counts: dict[int, int] = {}
    for (project_id, action), n in report.applied.items():
        if project_id is not None and action in CHANGE_ACTIONS:
            counts[project_id] = counts.get(project_id, 0) + n
    return counts


def schedule_trigger(settings: LoopSettings) -> BaseTrigger | None:
    """The project's recurring trigger: cron when set, else the interval, else none (UTC)."""
    if settings.schedule_cron:
        return CronTrigger.from_crontab(settings.schedule_cron, timezone=UTC)
    if settings.schedule_interval_minutes:
        return IntervalTrigger(minutes=settings.schedule_interval_minutes, timezone=UTC)
    return None


def cycle_job_id(project_id: int) -> str:
    return f"cycle:{project_id}"


def schedule_job_id(project_id: int) -> str:
    return f"schedule:{project_id}"


# ---------------------------------------------------------------- the scheduler


class _Background(BackgroundScheduler):  # type: ignore[misc]  # APScheduler ships no types
    """APScheduler's BackgroundScheduler without its last pass after ``shutdown()``.

    In 3.11, ``shutdown()`` marks the scheduler stopped, closes executors and stores, then wakes its
    thread, which processes due jobs once more: a job due at that moment meets the closed executor
    and the thread dies with a JobLookupError. Checking the state under the job-store lock (which
    ``shutdown()`` also takes, after setting the state) closes that window.
    """

    def _process_jobs(self) -> float | None:
        with self._jobstores_lock:
            if self.state == STATE_STOPPED:
                return None
            result: float | None = super()._process_jobs()
            return result


class LoopScheduler:
    """The deployment's one scheduler: APScheduler with its jobs in the state database.

    Args:
        store: the state store: cycle records, leases and the schedules' next run times.
        runner: the cycle, ``runner(ctx, project_id)``.
        settings: the deployment's loop settings (``poll_s``, ``lease_s``, ``misfire_grace_s``).
        settings_for: per-project loop settings (``retrain_after``, ``debounce_s``,
            ``max_delay_s``, schedule); defaults to ``settings`` for every project.
        apply_inbox: also apply the webhook inbox every ``poll_s`` and feed it to the triggers
            (``labelloop scheduler``; in ``labelloop serve`` the inbox worker does that).
        clock: the time triggers and records use (tests pass a controllable one).
        max_workers: cycles of different projects that may run at the same time.
        dispatch: hand a due cycle to other processes instead of running it here
            (``loop.executor: rq``: :class:`backend.runtime.workers.RQDispatch`); the waiting
            record is offered again every ``poll_s`` until a worker has taken it.
        refill: tops up the project's pushed queue after annotation changes, on a worker thread
            (:func:`backend.loop.queue.make_refill`); None: never.
    """

    def __init__(
        self,
        store: Store,
        runner: CycleRunner,
        settings: LoopSettings,
        *,
        settings_for: SettingsFor | None = None,
        apply_inbox: bool = False,
        clock: Clock = utcnow,
        max_workers: int = 4,
        dispatch: Callable[[int], None] | None = None,
        refill: Callable[[int], None] | None = None,
    ) -> None:
        self._refill = refill
        self._dispatch = dispatch
        self._store, self._runner, self._settings = store, runner, settings
        self._settings_for: SettingsFor = settings_for or (lambda _project_id: settings)
        self._apply_inbox, self._clock = apply_inbox, clock
        self._aps = _Background(
            jobstores={"default": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(max_workers)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": settings.misfire_grace_s,
            },
            timezone=UTC,
        )
        self._aps.add_listener(self._job_finished, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._running: set[int] = set()  # projects whose cycle runs in this process now

    # -- life

    def start(self, *, paused: bool = False) -> None:
        """Start APScheduler and run one housekeeping pass (``paused``: fire nothing)."""
        try:
            self._aps.start(paused=paused)
            self._aps.add_job(
                self.tick,
                "interval",
                seconds=self._settings.poll_s,
                id="housekeeping",
                replace_existing=True,
            )
            self.tick()
        except BaseException:
            self.shutdown()
            raise
        log.debug("scheduler started (paused=%s)", paused)

    def resume(self) -> None:
        self._aps.resume()

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop firing and wait for running cycles (``wait``)."""
        with self._idle:
            self._closing = True
            if wait:  # before APScheduler takes its locks: see _guarded
                self._idle.wait_for(lambda: self._in_flight == 0)
        if self._aps.running:
            self._aps.shutdown(wait=wait)

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run work from a job or listener unless shutting down; ``shutdown`` waits for it.

        APScheduler's ``shutdown(wait=True)`` holds its job-store lock while it joins the worker
        threads, so a job that called ``add_job``/``get_job`` then would wait for ever. Jobs that
        started before shutdown finish first; later ones do nothing.
        """
        with self._idle:
            if self._closing:
                return
            self._in_flight += 1
        try:
            work()
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    # -- triggers

    def on_applied(self, report: ApplyReport) -> None:
        """Feed an inbox report: START_TRAINING runs at once, annotation changes debounce."""
        for project_id in sorted(report.train_requested):
            self.request(project_id, "start_training")
        for project_id, n in sorted(changes_per_project(report).items()):
            self.note_changes(project_id, n)

    def note_changes(self, project_id: int, n: int) -> datetime | None:
        """Count ``n`` annotation changes; returns when the project's cycle is due, if it is."""
        now, settings = self._clock(), self._settings_for(project_id)
        if self._refill is not None:
            self._aps.add_job(
                self._refill_now,
                args=(project_id,),
                id=f"refill:{project_id}",
                name=f"queue top-up of project {project_id}",
                replace_existing=True,
            )
        with self._store.session() as session:
            state = cycle_records.add_changes(session, project_id, n)
            decision = debounce(state.changes, state.triggered_at, now=now, settings=settings)
            if decision is None:
                return None
            state.triggered_at = decision.triggered_at
            cycle = cycle_records.request(
                session, project_id, "debounce", due_at=decision.due_at, now=now
            )
            due = cycle.due_at or now
        self._schedule_run(project_id, due)
        return due

    def request(self, project_id: int, trigger: str = "manual") -> int:
        """Ask for a cycle now (manual, START_TRAINING, schedule); returns the queued cycle id."""
        now = self._clock()
        with self._store.session() as session:
            cycle = cycle_records.request(session, project_id, trigger, due_at=now, now=now)
            cycle_id, due = cycle.id, cycle.due_at or now
        self._schedule_run(project_id, due)
        log.info("cycle %d of project %d requested (%s)", cycle_id, project_id, trigger)
        return cycle_id

    # -- jobs

    def _refill_now(self, project_id: int) -> None:
        refill = self._refill
        if refill is not None:
            self._guarded(lambda: refill(project_id))

    def run_due(self, project_id: int) -> None:
        """What ``cycle:<project>`` does when it fires: run the waiting cycle under the lease."""
        self._guarded(lambda: self._run_due(project_id))

    def run_scheduled(self, project_id: int) -> None:
        """What ``schedule:<project>`` does when it fires: request a cycle."""
        self._guarded(lambda: self._request_scheduled(project_id))

    def _request_scheduled(self, project_id: int) -> None:
        self.request(project_id, "schedule")

    def _run_due(self, project_id: int) -> None:
        now = self._clock()
        with self._store.session() as session:
            waiting = cycle_records.queued_cycle(session, project_id)
            due = waiting.due_at if waiting is not None else None
        if waiting is None:
            return  # already run (by another process or ``labelloop cycle``)
        if due is not None and due > now:
            self._schedule_run(project_id, due)  # a stale alarm; the record wants later
            return
        if self._dispatch is not None:
            # A worker runs it; look again after a while in case the job was lost or skipped.
            self._dispatch(project_id)
            self._schedule_run(project_id, now + timedelta(seconds=self._settings.poll_s))
            return
        with self._idle:
            self._running.add(project_id)
        try:
            run = run_cycle_once(
                self._store,
                self._runner,
                project_id,
                lease_s=self._settings.lease_s,
                clock=self._clock,
            )
        finally:
            with self._idle:
                self._running.discard(project_id)
        if run is None:  # another process runs this project now: look again after a while
            self._schedule_run(project_id, now + timedelta(seconds=self._settings.poll_s))

    def next_run(self, project_id: int) -> datetime | None:
        """When the project's waiting cycle is set to start (None: nothing scheduled)."""
        job = self._aps.get_job(cycle_job_id(project_id))
        return job.next_run_time if job is not None else None

    def schedule_of(self, project_id: int) -> tuple[BaseTrigger, datetime] | None:
        """The project's recurring trigger and its next run, as stored (None: no schedule)."""
        job = self._aps.get_job(schedule_job_id(project_id))
        return (job.trigger, job.next_run_time) if job is not None else None

    def _schedule_run(self, project_id: int, at: datetime) -> None:
        with self._idle:
            if project_id in self._running:
                return  # it would only be skipped as a second instance; _rearm sets it after
        self._aps.add_job(
            self.run_due,
            DateTrigger(run_date=max(at, self._clock()), timezone=UTC),
            args=(project_id,),
            id=cycle_job_id(project_id),
            name=f"cycle of project {project_id}",
            replace_existing=True,
        )

    def _ensure_job(self, project_id: int, due: datetime | None, scheduled: set[str]) -> None:
        if cycle_job_id(project_id) not in scheduled:
            self._schedule_run(project_id, due or self._clock())

    def _job_finished(self, event: JobExecutionEvent) -> None:
        # Runs after APScheduler counted the instance as done, so a trigger that arrived during
        # the run (and was skipped as a second instance) gets its job here without a race.
        if event.job_id.startswith("cycle:"):
            self._guarded(lambda: self._rearm(event.job_id))
        elif event.job_id.startswith("schedule:"):
            self._guarded(lambda: self._advance_schedule(event))

    def _advance_schedule(self, event: JobExecutionEvent) -> None:
        """Store the schedule's next run after it fired (computed as APScheduler computes it)."""
        job = self._aps.get_job(event.job_id)
        if job is None:
            return
        project_id = int(event.job_id.split(":", 1)[1])
        after = job.trigger.get_next_fire_time(event.scheduled_run_time, self._clock())
        self._store_schedule(project_id, str(job.trigger), after)

    def _store_schedule(self, project_id: int, key: str | None, next_at: datetime | None) -> None:
        with self._store.session() as session:
            state = cycle_records.loop_state(session, project_id)
            state.schedule, state.schedule_next_at = key, next_at

    def _rearm(self, job_id: str) -> None:
        project_id = int(job_id.split(":", 1)[1])
        with self._store.session() as session:
            waiting = cycle_records.queued_cycle(session, project_id)
            due = waiting.due_at if waiting is not None else None
        if waiting is not None:
            scheduled = {job_id} if self._aps.get_job(job_id) else set()
            self._ensure_job(project_id, due, scheduled)

    # -- housekeeping

    def tick(self) -> None:
        """Apply the inbox (when asked), reap dead cycles, refresh schedules, arm waiting cycles."""
        self._guarded(self._tick)

    def _tick(self) -> None:
        if self._apply_inbox:
            from backend.loop.inbox import apply_pending

            self.on_applied(apply_pending(self._store))
        with self._store.session() as session:
            reaped = cycle_records.reap_interrupted(session, now=self._clock())
        if reaped:
            log.warning("marked interrupted cycles failed: %s", reaped)
        self.sync_schedules()
        self.ensure_jobs()

    def ensure_jobs(self) -> None:
        """Give every waiting cycle (from any process) its job."""
        with self._store.session() as session:
            waiting = [(c.project_id, c.due_at) for c in cycle_records.queued_cycles(session)]
        scheduled = {job.id for job in self._aps.get_jobs()}
        for project_id, due in waiting:
            self._ensure_job(project_id, due, scheduled)
            scheduled.add(cycle_job_id(project_id))

    def sync_schedules(self) -> None:
        """Make every known project's recurring job match its settings (kept when unchanged).

        A schedule whose stored key matches its settings resumes at its stored next run time, so
        a restart keeps its phase, and a run missed while down fires within the misfire grace.
        """
        with self._store.session() as session:
            stored = {
                row.project_id: (row.schedule, row.schedule_next_at)
                for row in session.scalars(select(LoopState).where(LoopState.schedule.is_not(None)))
            }
            project_ids = list(session.scalars(select(Project.id).order_by(Project.id)))
        for project_id in project_ids:
            job = self._aps.get_job(schedule_job_id(project_id))
            trigger = schedule_trigger(self._settings_for(project_id))
            if trigger is None:
                if job is not None:
                    self._aps.remove_job(job.id)
                if project_id in stored:
                    self._store_schedule(project_id, None, None)
                continue
            key = str(trigger)
            if job is not None and str(job.trigger) == key:
                continue
            stored_key, stored_next = stored.get(project_id, (None, None))
            resume = {"next_run_time": stored_next} if stored_key == key and stored_next else {}
            added = self._aps.add_job(
                self.run_scheduled,
                trigger,
                args=(project_id,),
                id=schedule_job_id(project_id),
                name=f"schedule of project {project_id}",
                replace_existing=True,
                **resume,
            )
            if not resume:
                self._store_schedule(project_id, key, added.next_run_time)


# ---------------------------------------------------------------- processes


def cycle_dispatch(settings: Settings) -> Callable[[int], None] | None:
    """Where due cycles go: None runs them in the scheduler's process (``loop.executor:
    threads``); with ``rq``, to the Redis queue that ``labelloop worker`` processes take from."""
    if settings.loop.executor != "rq":
        return None
    return RQDispatch(settings)


def start_embedded_scheduler(
    settings: Settings,
    store: Store,
    runner: CycleRunner,
    *,
    settings_for: SettingsFor | None = None,
) -> LoopScheduler | None:
    """The scheduler of ``labelloop serve``, or None when ``loop.run_scheduler`` is false.

    The embedded inbox worker applies webhooks; pass its reports to ``scheduler.on_applied``.
    """
    if not settings.loop.run_scheduler:
        log.info("loop.run_scheduler is false: a separate `labelloop scheduler` runs cycles")
        return None
    scheduler = LoopScheduler(
        store,
        runner,
        settings.loop,
        settings_for=settings_for,
        dispatch=cycle_dispatch(settings),
        refill=make_refill(settings, store),
    )
    scheduler.start()
    return scheduler
