"""The cycle's contract: what the runtime hands a running cycle, and what the stages pass on.

The runtime (:mod:`backend.runtime`) runs a :data:`CycleRunner` under the project's lease and gives
it a :class:`CycleContext`; the cycle (:mod:`backend.loop.cycle`) reports its stages through it and
returns a :class:`CycleResult`::

    def run_cycle(ctx: CycleContext, project_id: int) -> CycleResult | None:
        with ctx.stage("reconcile") as counts:
            counts["tasks"] = ...
        with ctx.stage("featurize"):
            for done in ...:
                ctx.progress(done, total)
        ...
        return CycleResult(model_version="...", metrics={...})

Between its stages the cycle passes a :class:`Snapshot` (the project after reconcile), a
:class:`Trained` model version and the :class:`Scored` pool; the diagnosis reads the same ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from backend.labelstudio.client import LabelStudio
from backend.labelstudio.config import LabelConfig
from backend.loop.targets import Targets
from backend.model.train import TrainedModel
from backend.settings import LoopSettings, Settings
from backend.store import cycle_records
from backend.store.db import Store
from backend.store.models import Annotation, Task
from strategies import Pool
from strategies.combine import Priority

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5  # at most this often a progress report is written to the database


@dataclass(frozen=True)
class CycleResult:
    """What a successful cycle reports for its record."""

    model_version: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    #: Work that must not delay the cycle (the diagnosis, pruning old predictions): run after the
    #: record says succeeded, still under the lease; its seconds and counts go to the record as
    #: "after".
    after: Callable[[], Mapping[str, Any]] | None = None


class LeaseLost(RuntimeError):
    """Another process took over this project's lease (ours expired); the cycle must stop."""


class CycleContext:
    """What a running cycle sees of its own record: stages, counts and progress.

    Every call writes to the cycle record at once (progress at most every ``PROGRESS_EVERY_S``), so
    ``GET /api/projects/<id>/cycles`` shows it live. Calls raise :class:`LeaseLost` when the lease
    was taken over, stopping a cycle that another process is now entitled to run.
    """

    def __init__(
        self,
        store: Store,
        *,
        cycle_id: int,
        project_id: int,
        trigger: str,
        lease_lost: threading.Event | None = None,
    ) -> None:
        self.cycle_id, self.project_id, self.trigger = cycle_id, project_id, trigger
        self._store = store
        self._lost = lease_lost or threading.Event()
        self._last_progress = 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, int]]:
        """Run one stage: records it as the current stage, then its seconds and counts.

        Yields:
            a dict the stage fills with its counts (``counts["tasks"] = 1000``); it is stored
            under the stage's name when the stage ends, also when it raised.
        """
        self.check()
        with self._store.session() as session:
            cycle_records.enter_stage(session, self.cycle_id, name)
        counts: dict[str, int] = {}
        started = time.perf_counter()
        try:
            yield counts
        finally:
            seconds = time.perf_counter() - started
            with self._store.session() as session:
                cycle_records.end_stage(
                    session, self.cycle_id, name, seconds=seconds, counts=counts
                )
            log.info("cycle %d %s: %.1f s %s", self.cycle_id, name, seconds, counts)

    def progress(self, done: int, total: int | None = None, per_s: float | None = None) -> None:
        """Report progress inside the current stage (``done`` of ``total`` items, ``per_s`` items
        per second)."""
        self.check()
        clock = time.monotonic()
        if clock - self._last_progress < PROGRESS_EVERY_S and done != total:
            return
        self._last_progress = clock
        with self._store.session() as session:
            cycle_records.set_progress(session, self.cycle_id, done, total, per_s)

    def check(self) -> None:
        """Raise :class:`LeaseLost` when this cycle may no longer run."""
        if self._lost.is_set():
            raise LeaseLost(f"project {self.project_id}: the cycle lease was taken over")


CycleRunner = Callable[[CycleContext, int], CycleResult | None]
"""The cycle itself, injected: ``runner(ctx, project_id)``; raising marks the cycle failed."""
RunnerFactory = Callable[[Settings, Store], CycleRunner]
"""Builds the runner for a process (``backend.runtime.runner.make_runner``)."""
SettingsFor = Callable[[int], LoopSettings]
"""Per-project loop settings (issue 6 reads overrides from the database)."""


@dataclass(frozen=True)
class Snapshot:
    """The project as the store holds it after reconcile."""

    cfg: LabelConfig
    tasks: list[Task]
    annotations: list[Annotation]
    targets: Targets


@dataclass(frozen=True)
class Trained:
    model: TrainedModel
    used: Targets
    version: str


@dataclass(frozen=True)
class Scored:
    task_ids: NDArray[np.int64]  # (n,) tasks in pool order
    pool: Pool
    priority: Priority
    probs: NDArray[np.float64] | None


class Diagnose(Protocol):
    """The diagnosis a cycle writes once recorded, injected: computed from what it produced (the
    :mod:`backend.diagnosis` builds it; the loop never reads it back) and pushed as Label Studio
    views. Returns counts for the cycle record; a failure is counted there, never raised."""

    def __call__(
        self,
        settings: Settings,
        store: Store,
        ls: LabelStudio,
        project_id: int,
        snap: Snapshot,
        embeddings: Mapping[int, NDArray[np.floating[Any]]],
        scored: Scored,
        trained: Trained | None,
    ) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class ServedModel:
    """A project's current model version as ``/predict`` serves it and the preview reads it."""

    project_id: int
    version: str
    model: TrainedModel
