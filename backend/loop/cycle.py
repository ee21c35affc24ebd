"""One retrain-and-requeue cycle: reconcile -> featurize -> train -> score -> push -> record.

:func:`run_cycle` only wires the stages and reports each stage's time and counts to the cycle
record; each stage lives in the module of its name:

- reconcile: :mod:`backend.loop.sync` (:func:`~backend.loop.sync.reconcile`, then the
  :class:`~backend.loop.contract.Snapshot` the stages read);
- featurize: :mod:`backend.loop.embed` (image statistics on the way:
  :mod:`backend.loop.image_stats`);
- train: :mod:`backend.loop.fit`;
- score: :mod:`backend.loop.score` (the pool and the strategies' priority), then the audit share
  and the adaptive selection, :mod:`backend.loop.selection`;
- push: the queue, :mod:`backend.loop.queue` (through :mod:`backend.loop.push`), and the review
  flags, :mod:`backend.loop.review`;
- record: the new model becomes current (:mod:`backend.loop.fit`);
- after (once the cycle is recorded, off the annotators' critical path): the diagnosis the
  runtime passes in is written (:class:`~backend.loop.contract.Diagnose`) and old versions'
  predictions are pruned.

A failure in any stage leaves the previous model serving ``/predict`` and the previous queue live
in Label Studio: the new model only becomes current in ``record``, and Label Studio only switches
to the new predictions once they are all imported.
"""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.labelstudio.client import LabelStudio
from backend.loop import selection
from backend.loop.clusters import project_clusters
from backend.loop.contract import CycleContext, CycleResult, Diagnose
from backend.loop.embed import embed_tasks, project_backbone
from backend.loop.fit import activate_version, new_version, train_stage, version_prefix
from backend.loop.image_stats import ImageStatsRecorder, stats_path
from backend.loop.push import prune_predictions
from backend.loop.queue import push_head, queue_of
from backend.loop.review import push_reviews
from backend.loop.score import build_pool, score_stage
from backend.loop.selection import record_picks, select_stage
from backend.loop.sync import full_sync_due, load_snapshot, reconcile
from backend.model.engines import Engines
from backend.model.train import blas_threads
from backend.settings import Settings
from backend.store.db import Store
from backend.store.project_settings import effective_settings
from strategies.base import Basis

log = logging.getLogger(__name__)


class CollectorPause:
    """Python's cycle collector paused while cycles run: ``with pause:`` around each (across
    threads: it resumes when the last running cycle ends, if it was on before the first).

    A snapshot of 100,000 tasks holds millions of tracked objects, and every stage that builds
    its own (100,000 fetch closures, rows, dicts) set off full collections that scanned them all
    again (a warm featurize stage at 100,000 tasks: 0.9-1.4 s with it on, 0.9 s paused; more in
    the stages that build more). Reference counting still frees everything as it goes; only
    garbage in reference cycles waits for the collector, which runs again once no cycle does.
    The runtime's runner holds one for its process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._running == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._running += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0 and self._resume:
                gc.enable()


def run_cycle(
    ctx: CycleContext,
    settings: Settings,
    store: Store,
    ls: LabelStudio,
    project_id: int,
    *,
    diagnose: Diagnose,
    engines: Engines | None = None,
) -> CycleResult:
    """The cycle, stage by stage; see the module docstring for what a failure leaves behind.

    ``diagnose``: the record stage's diagnosis (the runtime passes
    :func:`backend.diagnosis.record.record_diagnosis`). ``engines``: where converted backbones
    are kept from one cycle to the next (None: converted for this cycle).
    """
    settings = effective_settings(store, settings, project_id)  # the project's overrides
    with ctx.stage("reconcile") as counts:
        full = full_sync_due(store, project_id, settings.loop.full_sync_every_s)
        report = reconcile(store, ls, project_id, incremental=not full)
        snap = load_snapshot(store, project_id)
        counts.update(
            tasks=len(snap.tasks),  # the project's, whatever this sync listed
            annotations=len(snap.annotations),
            listed=report.tasks,
            events_applied=report.events_applied,
            incremental=int(report.incremental),
        )
    with ctx.stage("featurize") as counts, ls.image_resolver(settings.images) as resolver:
        stats = ImageStatsRecorder(stats_path(settings, project_id))
        fetch = stats.observing(resolver.fetch)
        tuned = project_backbone(
            settings, project_id, snap.cfg, snap.tasks, snap.targets, fetch, engines=engines
        )
        result, backbone = embed_tasks(
            settings,
            store,
            snap.tasks,
            fetch,
            backbone=tuned,
            progress=ctx.progress,
            engines=engines,
        )
        counts.update(image_stats=stats.save())
        counts.update(
            embedded=len(result.embeddings),
            computed=result.n_computed,
            fetched=result.n_fetched,
            failed=len(result.failures),
        )
    # From here on numpy/scipy do the arithmetic (the backbone ran above on its own threads).
    with blas_threads(settings.model.blas_threads):
        with ctx.stage("train") as counts:
            trained = train_stage(settings, store, project_id, snap, result.embeddings, backbone)
            counts.update(labels=len(trained.used.task_ids) if trained else 0)
        with ctx.stage("score") as counts:
            reused: list[bool] = []

            def clusters_for(
                task_ids: NDArray[np.int64], x: NDArray[np.floating[Any]]
            ) -> tuple[NDArray[np.int64], Basis | None]:
                found = project_clusters(settings, project_id, task_ids, x)
                reused.append(found.reused)
                return found.labels, found.basis

            model_phase = len(snap.targets.task_ids) >= settings.strategy.cold_start_labels
            arrays = build_pool(
                snap,
                result.embeddings,
                trained,
                settings.diagnosis.slice_fields,
                clusters_for if model_phase else None,
            )
            scored = score_stage(settings, arrays)
            chosen = select_stage(settings, store, project_id, snap, scored)
            scored = replace(scored, priority=chosen.priority)
            counts.update(
                unlabeled=len(scored.priority.order),
                labeled=int(scored.pool.labeled.sum()),
                clusters_reused=int(any(reused)),
            )
        with ctx.stage("push") as counts:
            version = trained.version if trained else f"{new_version(settings, project_id)}-cold"
            queue = queue_of(settings, scored, trained, version)
            counts.update(push_head(settings, ls, project_id, queue, snap.cfg))
            head = queue.items(0, min(queue.n, len(chosen.arms)))
            counts.update(
                audit_recorded=record_picks(store, project_id, ctx.cycle_id, version, head, chosen)
            )
            counts.update(push_reviews(settings, store, ls, ctx, snap, scored))
        with ctx.stage("record") as counts:
            if trained is not None:
                activate_version(settings, store, project_id, trained.version)
            counts.update(model=int(trained is not None))
    metrics: dict[str, Any] = (
        dict(trained.model.metrics) if trained else {"phase": scored.priority.phase}
    )
    metrics.update(chosen.metrics(selection.audit_accuracy(store, project_id)))

    def after() -> dict[str, Any]:
        # After the cycle is recorded: the new model and queue serve already, nobody labeling
        # waits on the diagnosis (the dashboard's, and its Label Studio views) or the pruning.
        out: dict[str, Any] = {}
        try:
            with blas_threads(settings.model.blas_threads):
                out["diagnosis"] = diagnose(
                    settings, store, ls, project_id, snap, result.embeddings, scored, trained
                )
        except Exception:  # the next cycle writes the diagnosis again; pruning still runs
            log.exception("project %d: diagnosis of version %s failed", project_id, version)
            out["diagnosis"] = {"failed": 1}
        prefix = version_prefix(settings, project_id)
        out["deleted_predictions"] = prune_predictions(ls, project_id, prefix, version)
        return out

    return CycleResult(model_version=version, metrics=metrics, after=after)
