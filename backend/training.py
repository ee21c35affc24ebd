"""Train a project's model from the store: labels, featurize, fit, store the version.

Used by ``labelloop train`` and by the cycle. Label Studio stays the source of truth; this reads the
store (call reconcile first) and writes a checkpoint plus a ``model_versions`` row.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
from sqlalchemy import select

from backend.labelstudio.config import LabelConfig
from backend.loop import ingest
from backend.model.backbones import (
    Backbone,
    TorchBackbone,
    build_backbone,
    save_weights,
    weights_path,
)
from backend.model.cache import EmbeddingCache
from backend.model.checkpoint import save_checkpoint
from backend.model.featurize import FeaturizeResult, Progress, featurize
from backend.model.finetune import fine_tune_backbone
from backend.model.runtime import for_inference
from backend.model.train import TrainedModel, train_model
from backend.settings import Settings
from backend.store import repo, task_images
from backend.store.db import Store
from backend.store.models import Annotation, ModelVersion, Project, Task
from strategies.label_quality import crowd_consensus

log = logging.getLogger(__name__)


class NotEnoughLabels(ValueError):
    """Too few usable labels to train; the message says how many there are and what is needed."""


@dataclass(frozen=True)
class Targets:
    """Training targets, one row per labeled task.

    Attributes:
        task_ids: (n,) task ids, ascending.
        y: (n,) class indices (single-label) or (n, C) {0, 1} (multi-label).
    """

    task_ids: np.ndarray
    y: np.ndarray


def _votes(annotations: Sequence[Annotation], classes: Sequence[str]) -> dict[int, list[list[str]]]:
    known = set(classes)
    votes: dict[int, list[list[str]]] = defaultdict(list)
    for ann in annotations:
        labels = [label for label in ann.labels if label in known]
        if labels:
            votes[ann.task_id].append(labels)
    return votes


def consensus_targets(annotations: Sequence[Annotation], cfg: LabelConfig) -> Targets:
    """One target per task from its live annotations.

    Single-label: the most common label; a tie goes to the label chosen most recently (annotations
    arrive ordered by id). Multi-label: a label is on when at least half the annotators chose it.
    """
    classes = list(cfg.labels)
    index = {label: i for i, label in enumerate(classes)}
    votes = _votes(annotations, classes)
    task_ids = np.array(sorted(votes), dtype=np.int64)
    if cfg.multiple:
        multi = np.zeros((len(task_ids), len(classes)), dtype=np.float32)
        for row, task in enumerate(task_ids):
            counts = Counter(label for vote in votes[int(task)] for label in set(vote))
            for label, count in counts.items():
                multi[row, index[label]] = float(2 * count >= len(votes[int(task)]))
        return Targets(task_ids, multi)
    y = np.empty(len(task_ids), dtype=np.int64)
    for row, task in enumerate(task_ids):
        firsts = [vote[0] for vote in votes[int(task)]]
        counts = Counter(firsts)
        best = max(counts.values())
        y[row] = index[next(label for label in reversed(firsts) if counts[label] == best)]
    return Targets(task_ids, _reliability_weighted(y, annotations, task_ids, index))


def annotator_matrix(
    annotations: Sequence[Annotation], task_ids: np.ndarray, index: dict[str, int]
) -> tuple[np.ndarray, list[int]]:
    """(n, A) first chosen class per task (rows: ``task_ids``) and annotator, -1 where none; and
    the annotator ids of the columns (0 for annotations without one)."""
    rows = {int(t): i for i, t in enumerate(task_ids)}
    annotators = sorted({a.annotator or 0 for a in annotations})
    column = {a: j for j, a in enumerate(annotators)}
    matrix = np.full((len(task_ids), max(1, len(annotators))), -1, dtype=np.int64)
    for ann in annotations:
        row = rows.get(ann.task_id)
        first = next((label for label in ann.labels if label in index), None)
        if row is not None and first is not None:
            matrix[row, column[ann.annotator or 0]] = index[first]
    return matrix, annotators


def _reliability_weighted(
    y: np.ndarray, annotations: Sequence[Annotation], task_ids: np.ndarray, index: dict[str, int]
) -> np.ndarray:
    """Where annotators disagree, the consensus weighs each by their estimated reliability
    (:func:`strategies.label_quality.crowd_consensus`); an exact tie keeps ``y`` (the label
    chosen most recently among the most common)."""
    matrix, _ = annotator_matrix(annotations, task_ids, index)
    lo = np.where(matrix >= 0, matrix, np.iinfo(np.int64).max).min(axis=1)
    disputed = (matrix >= 0).sum(axis=1) >= 2
    disputed &= lo != matrix.max(axis=1)
    if not disputed.any():
        return y
    crowd = crowd_consensus(matrix, len(index))
    top = np.sort(crowd.consensus, axis=1)
    clear = top[:, -1] - top[:, -2] > 1e-9
    return np.where(disputed & clear, crowd.consensus.argmax(axis=1), y).astype(np.int64)


def embed_tasks(
    settings: Settings,
    store: Store,
    tasks: Sequence[Task],
    fetch: Callable[[str], bytes],
    *,
    backbone: Backbone | None = None,
    progress: Progress | None = None,
) -> tuple[FeaturizeResult, str]:
    """Embeddings for ``tasks`` (cached by image content) and the backbone's name.

    A task whose image reference is the one the store remembers embedding is served from the
    cache by its remembered content hash: its image is not fetched again. ``backbone`` defaults
    to the one the settings name (see :func:`project_backbone`). Failures are recorded on the task
    rows (``image_error``) and skipped.
    """
    project_ids = {t.project_id for t in tasks}
    with store.session() as session:
        known: dict[int, str] = {}
        for project_id in project_ids:
            known.update(task_images.known_hashes(session, project_id, tasks))
    items = [(t.id, partial(fetch, t.image_ref)) for t in tasks if t.image_ref]
    result, backbone_name = embed_items(
        settings, items, backbone=backbone, known=known, progress=progress
    )
    missing = {t.id: "task has no image reference" for t in tasks if not t.image_ref}
    failures = {**result.failures, **missing}
    stale = [t.id for t in tasks if t.image_error != failures.get(t.id)]
    with store.session() as session:
        for start in range(0, len(stale), task_images.CHUNK):
            chunk = stale[start : start + task_images.CHUNK]
            for task in session.scalars(select(Task).where(Task.id.in_(chunk))):
                task.image_error = failures.get(task.id)
        task_images.record(session, tasks, result, backbone_name)
    return result, backbone_name


def embed_items(
    settings: Settings,
    items: Sequence[tuple[int, Callable[[], bytes]]],
    *,
    backbone: Backbone | None = None,
    known: Mapping[int, str] | None = None,
    progress: Progress | None = None,
) -> tuple[FeaturizeResult, str]:
    """Embeddings of ``(id, fetch)`` items through the disk cache.

    Args:
        backbone: the feature extractor; by default the one ``settings.model`` names.
        known: id -> image content hash already known (see :func:`featurize`).
        progress: called with (done, total, images per second) while it runs.

    Returns:
        the featurize result (failed items are in ``failures``) and the backbone's name.
    """
    backbone = backbone or build_backbone(settings.model)
    if isinstance(backbone, TorchBackbone):
        backbone = for_inference(backbone, settings.model, settings.store.data_dir)
    cache = EmbeddingCache(settings.store.data_dir / "embeddings")
    result = featurize(
        items,
        backbone,
        cache,
        batch_size=settings.model.batch_size,
        known=known,
        workers=settings.images.fetch_workers,
        progress=progress,
    )
    return result, backbone.name


def project_backbone(
    settings: Settings,
    project_id: int,
    cfg: LabelConfig,
    tasks: Sequence[Task],
    targets: Targets,
    fetch: Callable[[str], bytes],
) -> TorchBackbone:
    """The backbone to featurize with: the configured one, fine-tuned first in ``fine_tune`` mode.

    The tuned weights are saved under :func:`~backend.model.backbones.weights_path` so ``/predict``
    can embed with them. While labels are too few to train (see :class:`NotEnoughLabels`) the
    pretrained backbone is used as it is.
    """
    base = build_backbone(settings.model)
    if not settings.model.fine_tune:
        return base
    refs = {t.id: t.image_ref for t in tasks if t.image_ref}
    labeled = [(int(t), partial(fetch, refs[int(t)])) for t in targets.task_ids if int(t) in refs]
    # A failing fetch would stop the fine-tuning run, so only images that embed are used.
    readable = embed_items(settings, labeled, backbone=base)[0].embeddings
    keep = np.array([int(t) in readable for t in targets.task_ids], dtype=bool)
    used = Targets(targets.task_ids[keep], targets.y[keep])
    try:
        _check_enough(used, cfg.multiple)
    except NotEnoughLabels as exc:
        log.info("project %d: backbone not fine-tuned: %s", project_id, exc)
        return base
    tuned = fine_tune_backbone(
        base,
        [partial(fetch, refs[int(t)]) for t in used.task_ids],
        used.y,
        n_classes=len(cfg.labels),
        multilabel=cfg.multiple,
        settings=settings.model,
        max_steps=settings.model.fine_tune_steps,
    )
    save_weights(tuned, weights_path(settings.store.data_dir, project_id, tuned.name))
    log.info(
        "project %d: fine-tuned backbone %s on %d labels",
        project_id,
        tuned.name,
        len(used.task_ids),
    )
    return tuned


@dataclass(frozen=True)
class TrainOutcome:
    version: str
    path: Path
    model: TrainedModel
    n_labels: int
    n_failed: int
    featurize_seconds: float
    train_seconds: float


def version_prefix(settings: Settings, project_id: int) -> str:
    """What every model version of the project starts with (the cold ones too)."""
    return f"{settings.server.title}-p{project_id}-"


def new_version(settings: Settings, project_id: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{version_prefix(settings, project_id)}{stamp}"


def _load_inputs(store: Store, project_id: int) -> tuple[LabelConfig, list[Task], Targets]:
    with store.session() as session:
        project = session.get(Project, project_id)
        if project is None:
            raise NotEnoughLabels(f"project {project_id} is not known; run connect or sync first")
        cfg = ingest.project_config(project)
        if cfg is None:
            raise NotEnoughLabels(
                f"project {project_id} has no supported label config: {project.config_error}"
            )
        targets = consensus_targets(repo.live_annotations(session, project_id), cfg)
        wanted = set(targets.task_ids.tolist())
        tasks = [t for t in repo.live_tasks(session, project_id) if t.id in wanted]
    return cfg, tasks, targets


def _check_enough(targets: Targets, multiple: bool) -> None:
    n = len(targets.task_ids)
    distinct = int((targets.y.sum(axis=0) > 0).sum()) if multiple else len(np.unique(targets.y))
    if n < 4 or distinct < 2:
        raise NotEnoughLabels(
            f"{n} labeled tasks covering {distinct} classes; at least 4 labeled tasks "
            "and 2 classes are needed to train"
        )


def fit(
    settings: Settings,
    cfg: LabelConfig,
    targets: Targets,
    embeddings: dict[int, np.ndarray],
    backbone: str,
) -> tuple[TrainedModel, Targets, float]:
    """Train on the labeled tasks that have embeddings.

    Returns:
        the model, the targets it was trained on (row order of ``model.oos_probs``) and the
        training time in seconds.

    Raises:
        NotEnoughLabels: fewer than 4 usable labels or fewer than 2 classes among them.
    """
    keep = np.array([int(t) in embeddings for t in targets.task_ids], dtype=bool)
    used = Targets(targets.task_ids[keep], targets.y[keep])
    _check_enough(used, cfg.multiple)
    x = np.stack([embeddings[int(t)] for t in used.task_ids])
    t0 = time.perf_counter()
    model = train_model(
        x,
        used.y,
        classes=list(cfg.labels),
        multilabel=cfg.multiple,
        settings=settings.model,
        backbone=backbone,
    )
    return model, used, time.perf_counter() - t0


def store_version(
    settings: Settings,
    store: Store,
    project_id: int,
    model: TrainedModel,
    *,
    n_labels: int,
    train_seconds: float,
    activate: bool,
) -> tuple[str, Path]:
    """Write the checkpoint atomically and record the version; make it current if ``activate``."""
    version = new_version(settings, project_id)
    path = settings.store.data_dir / "models" / f"p{project_id}" / f"{version}.ckpt"
    save_checkpoint(model, path)
    with store.session() as session:
        session.add(
            ModelVersion(
                project_id=project_id,
                version=version,
                path=str(path),
                backbone=model.backbone,
                n_labels=n_labels,
                metrics=dict(model.metrics),
                train_seconds=train_seconds,
            )
        )
    if activate:
        activate_version(settings, store, project_id, version)
    return version, path


def activate_version(settings: Settings, store: Store, project_id: int, version: str) -> None:
    """Serve ``version`` for the project from now on, then prune old checkpoints."""
    with store.session() as session:
        repo.ensure_project(session, project_id).model_version = version
    prune_versions(settings, store, project_id)


def train_project(
    settings: Settings, store: Store, project_id: int, fetch: Callable[[str], bytes]
) -> TrainOutcome:
    """Featurize the labeled tasks, train, write the checkpoint and make it the current model."""
    cfg, tasks, targets = _load_inputs(store, project_id)
    _check_enough(targets, cfg.multiple)
    tuned = project_backbone(settings, project_id, cfg, tasks, targets, fetch)
    result, backbone = embed_tasks(settings, store, tasks, fetch, backbone=tuned)
    model, used, train_seconds = fit(settings, cfg, targets, result.embeddings, backbone)
    version, path = store_version(
        settings,
        store,
        project_id,
        model,
        n_labels=len(used.task_ids),
        train_seconds=train_seconds,
        activate=True,
    )
    return TrainOutcome(
        version,
        path,
        model,
        len(used.task_ids),
        len(result.failures),
        result.seconds,
        train_seconds,
    )


def prune_versions(settings: Settings, store: Store, project_id: int) -> list[str]:
    """Delete checkpoints beyond ``model.keep_versions``; never the current one.

    Fine-tuned backbone weights go with the last checkpoint that was trained on them.
    """
    with store.session() as session:
        current = repo.ensure_project(session, project_id).model_version
        rows = list(
            session.scalars(
                select(ModelVersion)
                .where(ModelVersion.project_id == project_id)
                .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
            )
        )
        removed, unused = [], set()
        for row in rows[settings.model.keep_versions :]:
            if row.version == current or not row.path:  # current, or pruned before
                continue
            Path(row.path).unlink(missing_ok=True)
            if row.path and row.backbone and "+ft" in row.backbone:
                unused.add(row.backbone)
            row.path = ""
            removed.append(row.version)
        unused -= {row.backbone for row in rows if row.path}
    for name in unused:
        weights_path(settings.store.data_dir, project_id, name).unlink(missing_ok=True)
    return removed
