"""One retrain-and-requeue cycle: reconcile -> featurize -> train -> score -> push -> record.

Each stage is a function; :func:`run_cycle` only wires them and reports each stage's time and
counts to the cycle record. A failure in any stage leaves the previous model serving ``/predict``
and the previous queue live in Label Studio: the new model only becomes current in ``record``, and
Label Studio only switches to the new predictions once they are all imported.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

import numpy as np

from backend.labelstudio.client import LabelStudio
from backend.labelstudio.config import LabelConfig
from backend.loop import ingest, selection
from backend.loop.clusters import project_clusters
from backend.loop.contract import CycleContext, CycleResult, Diagnose, Scored, Snapshot, Trained
from backend.loop.doubt import Doubt, doubt_of, tag_names
from backend.loop.embed import embed_tasks, project_backbone
from backend.loop.fit import activate_version, fit, new_version, store_version, version_prefix
from backend.loop.image_stats import ImageStatsRecorder, stats_path
from backend.loop.push import (
    QueueItem,
    ReviewKind,
    Suspect,
    mark_reviewed,
    prune_predictions,
    push_queue,
    push_review,
    settled_tasks,
)
from backend.loop.queue import QueueState, save_state
from backend.loop.review import SUSPICION, crowd_of, decide, flag_scores, review_signal
from backend.loop.sync import reconcile
from backend.loop.targets import NotEnoughLabels, annotator_matrix, consensus_targets
from backend.loop.task_fields import slice_columns, slice_ids
from backend.settings import Settings
from backend.store import repo
from backend.store.db import Store
from backend.store.models import Annotation, Project
from backend.store.project_settings import effective_settings
from strategies import REGISTRY, Pool
from strategies.base import Signal, threads
from strategies.combine import Priority, prioritize
from strategies.duplicates import demote, near_copies_of_labeled
from strategies.label_quality import Crowd, LabelQuality

log = logging.getLogger(__name__)


def load_snapshot(store: Store, project_id: int) -> Snapshot:
    with store.session() as session:
        project = session.get(Project, project_id)
        cfg = ingest.project_config(project) if project is not None else None
        if cfg is None:
            reason = project.config_error if project is not None else "unknown project"
            raise NotEnoughLabels(f"project {project_id} has no supported label config: {reason}")
        tasks = repo.live_tasks(session, project_id)
        annotations = repo.live_annotations(session, project_id)
    return Snapshot(cfg, tasks, annotations, consensus_targets(annotations, cfg))


def train_stage(
    settings: Settings,
    store: Store,
    project_id: int,
    snap: Snapshot,
    embeddings: dict[int, np.ndarray],
    backbone: str,
) -> Trained | None:
    """A new model version (written, not yet current), or None while labels are too few."""
    try:
        model, used, seconds = fit(settings, snap.cfg, snap.targets, embeddings, backbone)
    except NotEnoughLabels as exc:
        log.info("project %d: no model this cycle: %s", project_id, exc)
        return None
    version, _ = store_version(
        settings,
        store,
        project_id,
        model,
        n_labels=len(used.task_ids),
        train_seconds=seconds,
        activate=False,
    )
    return Trained(model, used, version)


def _annotator_matrix(snap: Snapshot, task_ids: np.ndarray) -> np.ndarray | None:
    if snap.cfg.multiple:
        return None
    classes = {label: i for i, label in enumerate(snap.cfg.labels)}
    return annotator_matrix(snap.annotations, task_ids, classes)[0]


ClustersFor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def build_pool(
    snap: Snapshot,
    embeddings: dict[int, np.ndarray],
    trained: Trained | None,
    slice_fields: Sequence[str] | None = None,
    clusters_for: ClustersFor | None = None,
) -> tuple[np.ndarray, Pool, np.ndarray | None]:
    """Arrays for the strategies, in ascending task id order (tasks without embeddings left out).

    ``slice_fields``: task data fields whose values are the pool's slices (None: the offered
    low-cardinality fields, see :mod:`backend.loop.task_fields`).
    ``clusters_for(task_ids, embeddings)``: the pool's clusters once a model exists (the cycle
    reuses stored ones, :mod:`backend.loop.clusters`); None lets the strategies run k-means.
    """
    task_ids = np.array(sorted(embeddings), dtype=np.int64)
    index = {int(t): i for i, t in enumerate(task_ids)}
    x = np.stack([embeddings[int(t)] for t in task_ids]) if len(task_ids) else np.zeros((0, 1))
    labels = np.full(len(task_ids), -1, dtype=np.int64)
    targets = snap.targets
    tags = np.zeros((len(task_ids), len(snap.cfg.labels)), dtype=np.int64)  # multi-label only
    for row, task in enumerate(targets.task_ids):
        if int(task) in index:
            labels[index[int(task)]] = 0 if snap.cfg.multiple else int(targets.y[row])
            if snap.cfg.multiple:
                tags[index[int(task)]] = targets.y[row]
    probs = committee = oos = None
    if trained is not None and len(task_ids):
        probs = trained.model.predict_proba(x)
        committee = trained.model.committee_proba(x)
        oos = probs.copy()
        for row, task in enumerate(trained.used.task_ids):
            oos[index[int(task)]] = trained.model.oos_probs[row]
    pool = Pool(
        labels=labels,
        probs=probs,
        committee=committee,
        embeddings=x,
        oos_probs=oos,
        annotations=_annotator_matrix(snap, task_ids),
        clusters=clusters_for(task_ids, x) if clusters_for and probs is not None else None,
        targets=tags if snap.cfg.multiple and oos is not None else None,
        slices=_slices(snap, task_ids, slice_fields),
        multilabel=snap.cfg.multiple,
    )
    return task_ids, pool, probs


def _slices(
    snap: Snapshot, task_ids: np.ndarray, configured: Sequence[str] | None
) -> np.ndarray | None:
    columns = slice_columns(snap.tasks, task_ids, configured, image_key=snap.cfg.value_key)
    return slice_ids(list(columns.values())) if columns else None


def score_stage(settings: Settings, scored_pool: tuple[np.ndarray, Pool, Any]) -> Scored:
    task_ids, pool, probs = scored_pool
    strategy = settings.strategy
    limit: AbstractContextManager[None] = (
        threads(strategy.score_threads) if strategy.score_threads else nullcontext()
    )
    with limit:
        priority = _prioritize(settings, pool)
        if strategy.near_duplicates_last and pool.embeddings is not None:
            copies = near_copies_of_labeled(
                pool.embeddings,
                pool.labeled,
                threshold=settings.diagnosis.near_duplicate_similarity,
                seed=settings.model.seed,
            )
            priority = demote(priority, copies)
    return Scored(task_ids, pool, priority, probs)


def _prioritize(settings: Settings, pool: Pool) -> Priority:
    strategy = settings.strategy
    return prioritize(
        pool,
        strategy.weights,
        rng=np.random.default_rng(settings.model.seed),
        batch_size=strategy.batch_size,
        diversity=strategy.diversity,
        n_clusters=strategy.n_clusters,
        cold_start_labels=strategy.cold_start_labels,
        review_share=strategy.review_share,
        fade_after=strategy.fade_after,
    )


def suggestions(trained: Trained | None, probs: np.ndarray | None, n: int) -> np.ndarray:
    """(n, C) bool pre-annotation of every pool row (``predict_annotation``, vectorized): the top
    class, or every label at or above its threshold; (n, 0) before a model exists."""
    if trained is None or probs is None:
        return np.zeros((n, 0), dtype=bool)
    model = trained.model
    if model.multilabel:
        cut = 0.5 if model.thresholds is None else np.asarray(model.thresholds, dtype=float)
        return np.asarray(probs >= cut, dtype=bool)
    chosen = np.zeros(probs.shape, dtype=bool)
    chosen[np.arange(probs.shape[0]), probs.argmax(axis=1)] = True
    return chosen


def queue_of(
    settings: Settings, scored: Scored, trained: Trained | None, version: str
) -> QueueState:
    """Every unlabeled task in the order the strategies chose, with its pre-annotation."""
    order = scored.priority.order
    clusters = scored.priority.clusters if settings.strategy.push_clusters else None
    classes = tuple(trained.model.classes) if trained is not None else ()
    return QueueState(
        version=version,
        task_ids=scored.task_ids[order].astype(np.int64),
        suggested=suggestions(trained, scored.probs, len(scored.task_ids))[order],
        classes=classes,
        clusters=clusters[order].astype(np.int64) if clusters is not None else None,
        pushed=0,
    )


def queue_items(settings: Settings, scored: Scored, trained: Trained | None) -> list[QueueItem]:
    """One queue entry per unlabeled task, in the order the strategies chose.

    Label Studio's prediction import drops scores outside [0, 1], so the queue position is
    scaled into [0, 1): lower still means label first.
    """
    queue = queue_of(settings, scored, trained, "")
    return queue.items(0, queue.n)


def _describe(counts: Counter[str]) -> str:
    return ", ".join(f"{label} x{n}" for label, n in counts.most_common())


def _review_scores(
    settings: Settings,
    pool: Pool,
    info: Signal,
    quality: LabelQuality | None,
    crowd: Crowd | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(n,) the review signal's scores and, where the signal has one, (n,) the label it suggests."""
    if quality is not None:
        return flag_scores(quality), quality.suggested
    scores = info.score(pool, rng=np.random.default_rng(settings.model.seed))
    if crowd is None:
        return scores, None
    # Disagreements first where the reliability-weighted consensus (with the model) is least
    # sure; only items whose annotators actually disagree are flagged.
    ranked = np.where(scores > 0, 1.0 - crowd.consensus.max(axis=1) + 1e-6, 0.0)
    return ranked, crowd.consensus.argmax(axis=1)


def suspects(
    settings: Settings, snap: Snapshot, scored: Scored, kind: str, exclude: set[int]
) -> list[Suspect]:
    """Labeled tasks a review signal ranks above its alarm level, most suspicious first."""
    pool = scored.pool
    name = review_signal(settings, pool) if kind == "label_error" else "annotator_disagreement"
    info = REGISTRY[name]
    if info.unavailable(pool) is not None:
        return []  # e.g. annotator disagreement in a multi-label project, or no model yet
    quality = decide(settings, pool) if name == SUSPICION else None
    crowd = crowd_of(pool) if kind == "disagreement" else None
    scores, suggested = _review_scores(settings, pool, info, quality, crowd)
    labeled = np.flatnonzero(pool.labeled)
    alarm = info.alarm if info.alarm is not None else 0.0
    hits = [
        int(i)
        for i in labeled[np.argsort(-scores[labeled], kind="stable")]
        if scores[i] > alarm and int(scored.task_ids[i]) not in exclude
    ]
    by_task: dict[int, list[Annotation]] = {}
    for ann in snap.annotations:
        by_task.setdefault(ann.task_id, []).append(ann)
    doubt = doubt_of(snap.cfg.labels, pool.labels, pool.oos_probs, pool.targets)
    out = []
    for i in hits:
        task_id, d = int(scored.task_ids[i]), doubt(i)
        if kind == "label_error" and quality is not None and suggested is not None:
            if pool.targets is not None:
                d = _suspected_tag(snap.cfg.labels, pool.targets[i], int(suggested[i]), quality, i)
            else:
                d = _suspected(snap.cfg.labels, int(pool.labels[i]), int(suggested[i]), quality, i)
            reason = d.reason
        elif kind == "label_error":
            if d is None:  # every label-error signal needs out-of-sample probabilities
                raise ValueError(
                    f"{name} flagged task {task_id} with no out-of-sample probabilities"
                )
            reason = d.reason
        else:
            votes = Counter(a.labels[0] for a in by_task.get(task_id, []) if a.labels)
            reason = f"annotators chose {_describe(votes)}"
            if crowd is not None:
                top = int(crowd.consensus[i].argmax())
                reason += (
                    f"; consensus weighing annotator reliability and the model: "
                    f"{snap.cfg.labels[top]!r} ({crowd.consensus[i, top]:.0%})"
                )
            elif d is not None:
                reason += f"; model says {d.predicted!r} ({d.confidence:.0%})"
        given = d.given if d is not None else snap.cfg.labels[int(pool.labels[i])]
        predicted, confidence = (d.predicted, d.confidence) if d is not None else (None, None)
        value = float(quality.p_error[i]) if quality is not None else float(scores[i])
        out.append(Suspect(task_id, value, reason, given, predicted, confidence))
    return out


def _suspected(
    names: Sequence[str], given: int, suggested: int, quality: LabelQuality, row: int
) -> Doubt:
    """The doubt of the evidence-based decision: the true class it believes and how sure."""
    p = float(quality.p_error[row])
    reason = (
        f"labeled {names[given]!r}; the model and similar labeled items say "
        f"{names[suggested]!r}: {p:.0%} likely mislabeled"
    )
    return Doubt(reason, names[given], names[suggested], p)


def _suspected_tag(
    names: Sequence[str], tags: np.ndarray, doubted: int, quality: LabelQuality, row: int
) -> Doubt:
    """The doubt of the per-tag decision: the doubted tag, given or not, and how sure."""
    p, name = float(quality.p_error[row]), names[doubted]
    given = tag_names(names, tags)
    if tags[doubted]:
        reason = f"tagged {name!r}; the model and similar labeled items say it is absent"
        predicted = tag_names(names, np.where(np.arange(len(tags)) == doubted, 0, tags))
    else:
        reason = f"not tagged {name!r}; the model and similar labeled items say it is present"
        predicted = tag_names(names, np.where(np.arange(len(tags)) == doubted, 1, tags))
    return Doubt(f"{reason}: {p:.0%} likely mislabeled", given, predicted, p)


def run_cycle(
    ctx: CycleContext,
    settings: Settings,
    store: Store,
    ls: LabelStudio,
    project_id: int,
    *,
    diagnose: Diagnose,
) -> CycleResult:
    """The cycle, stage by stage; see the module docstring for what a failure leaves behind.

    ``diagnose``: the record stage's diagnosis (the runtime passes
    :func:`backend.diagnosis.record.record_diagnosis`).
    """
    settings = effective_settings(store, settings, project_id)  # the project's overrides
    with ctx.stage("reconcile") as counts:
        report = reconcile(store, ls, project_id)
        counts.update(
            tasks=report.tasks, annotations=report.annotations, events_applied=report.events_applied
        )
        snap = load_snapshot(store, project_id)
    with ctx.stage("featurize") as counts, ls.image_resolver(settings.images) as resolver:
        stats = ImageStatsRecorder(stats_path(settings, project_id))
        fetch = stats.observing(resolver.fetch)
        tuned = project_backbone(settings, project_id, snap.cfg, snap.tasks, snap.targets, fetch)
        result, backbone = embed_tasks(
            settings, store, snap.tasks, fetch, backbone=tuned, progress=ctx.progress
        )
        counts.update(image_stats=stats.save())
        counts.update(
            embedded=len(result.embeddings),
            computed=result.n_computed,
            fetched=result.n_fetched,
            failed=len(result.failures),
        )
    with ctx.stage("train") as counts:
        trained = train_stage(settings, store, project_id, snap, result.embeddings, backbone)
        counts.update(labels=len(trained.used.task_ids) if trained else 0)
    with ctx.stage("score") as counts:
        reused: list[bool] = []

        def clusters_for(task_ids: np.ndarray, x: np.ndarray) -> np.ndarray:
            labels, again = project_clusters(settings, project_id, task_ids, x)
            reused.append(again)
            return labels

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
        counts.update(unlabeled=len(scored.priority.order), labeled=int(scored.pool.labeled.sum()))
        counts.update(clusters_reused=int(any(reused)))
    with ctx.stage("push") as counts:
        version = trained.version if trained else f"{new_version(settings, project_id)}-cold"
        queue = queue_of(settings, scored, trained, version)
        counts.update(push_head(settings, ls, project_id, queue, snap.cfg))
        head = queue.items(0, min(queue.n, len(chosen.arms)))
        counts.update(
            audit_recorded=record_picks(store, project_id, ctx.cycle_id, version, head, chosen)
        )
        counts.update(_push_reviews(settings, store, ls, ctx, snap, scored))
    with ctx.stage("record") as counts:
        if trained is not None:
            activate_version(settings, store, project_id, trained.version)
        counts.update(model=int(trained is not None))
        counts.update(
            diagnose(settings, store, ls, project_id, snap, result.embeddings, scored, trained)
        )
    metrics: dict[str, Any] = (
        dict(trained.model.metrics) if trained else {"phase": scored.priority.phase}
    )
    metrics.update(chosen.metrics(selection.audit_accuracy(store, project_id)))

    def prune() -> dict[str, int]:
        # After the cycle is recorded: the new version serves already, nobody waits on this.
        prefix = version_prefix(settings, project_id)
        return {"deleted_predictions": prune_predictions(ls, project_id, prefix, version)}

    return CycleResult(model_version=version, metrics=metrics, after=prune)


def push_head(
    settings: Settings, ls: LabelStudio, project_id: int, queue: QueueState, cfg: LabelConfig
) -> dict[str, int]:
    """Push the queue's first ``strategy.push_top_k`` tasks and switch Label Studio to them; the
    whole queue is stored for top-ups and ``/predict`` (:mod:`backend.loop.queue`)."""
    top_k = settings.strategy.push_top_k
    head = queue.n if top_k is None else min(top_k, queue.n)
    counts = push_queue(ls, project_id, queue.version, queue.items(0, head), cfg)
    save_state(settings, project_id, replace(queue, pushed=head))
    return {**counts, "queued": queue.n}


def given_labels(snap: Snapshot) -> dict[int, str]:
    """Task id -> its given label(s) now, written as review flags write them (``Doubt.given``)."""
    names = snap.cfg.labels
    if snap.cfg.multiple:
        return {
            int(t): tag_names(names, y)
            for t, y in zip(snap.targets.task_ids, snap.targets.y, strict=True)
        }
    return {
        int(t): names[int(y)] for t, y in zip(snap.targets.task_ids, snap.targets.y, strict=True)
    }


def select_stage(
    settings: Settings,
    store: Store,
    project_id: int,
    snap: Snapshot,
    scored: Scored,
    *,
    write: bool = True,
) -> selection.Plan:
    """The audit share and the adaptive selection over the scored pool (``write=False``: the
    preview's, which files nothing; :func:`backend.loop.selection.plan`)."""
    return selection.plan(
        settings,
        store,
        project_id,
        scored.pool,
        scored.priority,
        scored.task_ids,
        given_labels(snap),
        write=write,
    )


def record_picks(
    store: Store,
    project_id: int,
    cycle_id: int,
    version: str,
    items: Sequence[QueueItem],
    chosen: selection.Plan,
) -> int:
    """Record the pushed queue's first positions: arm or audit, and the model's prediction."""
    head = items[: len(chosen.arms)]
    return selection.record(
        store,
        project_id,
        cycle_id,
        version,
        [item.task_id for item in head],
        chosen.arms[: len(head)],
        [selection.predicted_string(item.labels) if item.labels else None for item in head],
    )


def _push_reviews(
    settings: Settings,
    store: Store,
    ls: LabelStudio,
    ctx: CycleContext,
    snap: Snapshot,
    scored: Scored,
) -> dict[str, int]:
    project_id, current = ctx.project_id, given_labels(snap)
    outcomes = mark_reviewed(store, project_id, current)
    counts: dict[str, int] = {f"review_{k}": v for k, v in outcomes.items()}
    kinds: tuple[ReviewKind, ...] = ("label_error", "disagreement")
    for kind in kinds:
        found = suspects(
            settings, snap, scored, kind, settled_tasks(store, project_id, kind, current)
        )
        explain = f"{settings.server.public_url}/dashboard/{project_id}/explain"
        found = [replace(f, explain_url=f"{explain}/{f.task_id}") for f in found]
        pushed = push_review(
            ls,
            store,
            project_id,
            kind,
            found,
            max_flags=settings.strategy.review_max_flags,
            image_key=snap.cfg.value_key,
            cycle_id=ctx.cycle_id,
        )
        counts.update({f"{kind}_{k}": v for k, v in pushed.items()})
    return counts
