"""The featurize stage: every task's image embedded by the project's backbone, through the cache.

A task whose image the store remembers embedding is served from the cache by its content hash
(its image is not fetched again); in ``fine_tune`` mode the backbone is tuned on the labels first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
from sqlalchemy import select

from backend.labelstudio.config import LabelConfig
from backend.loop.targets import NotEnoughLabels, Targets, check_enough
from backend.model.backbones import (
    Backbone,
    TorchBackbone,
    build_backbone,
    save_weights,
    weights_path,
)
from backend.model.cache import EmbeddingCache
from backend.model.engines import Engines, for_inference
from backend.model.featurize import FeaturizeResult, Progress, featurize
from backend.model.finetune import fine_tune_backbone
from backend.settings import Settings
from backend.store import task_images
from backend.store.db import Store
from backend.store.models import Task

log = logging.getLogger(__name__)


def embed_tasks(
    settings: Settings,
    store: Store,
    tasks: Sequence[Task],
    fetch: Callable[[str], bytes],
    *,
    backbone: Backbone | None = None,
    progress: Progress | None = None,
    engines: Engines | None = None,
) -> tuple[FeaturizeResult, str]:
    """Embeddings for ``tasks`` (cached by image content) and the backbone's name.

    A task whose image reference is the one the store remembers embedding is served from the
    cache by its remembered content hash: its image is not fetched again. ``backbone`` defaults
    to the one the settings name (see :func:`project_backbone`). Failures are recorded on the task
    rows (``image_error``) and skipped.
    """
    project_ids = {t.project_id for t in tasks}
    with store.session() as session:
        stored = task_images.stored_rows(session, project_ids)
    known = task_images.known_hashes(stored, tasks)
    items = [(t.id, partial(fetch, t.image_ref)) for t in tasks if t.image_ref]
    result, backbone_name = embed_items(
        settings, items, backbone=backbone, known=known, progress=progress, engines=engines
    )
    missing = {t.id: "task has no image reference" for t in tasks if not t.image_ref}
    failures = {**result.failures, **missing}
    stale = [t.id for t in tasks if t.image_error != failures.get(t.id)]
    with store.session() as session:
        for start in range(0, len(stale), task_images.CHUNK):
            chunk = stale[start : start + task_images.CHUNK]
            for task in session.scalars(select(Task).where(Task.id.in_(chunk))):
                task.image_error = failures.get(task.id)
        task_images.record(session, tasks, result, backbone_name, stored)
    return result, backbone_name


def embed_items(
    settings: Settings,
    items: Sequence[tuple[int, Callable[[], bytes]]],
    *,
    backbone: Backbone | None = None,
    known: Mapping[int, str] | None = None,
    progress: Progress | None = None,
    log_every: int = 500,
    engines: Engines | None = None,
) -> tuple[FeaturizeResult, str]:
    """Embeddings of ``(id, fetch)`` items through the disk cache.

    Args:
        backbone: the feature extractor; by default the one ``settings.model`` names (a torch
            backbone runs on the runtime the settings choose).
        known: id -> image content hash already known (see :func:`featurize`).
        progress: called with (done, total, images per second) while it runs.
        log_every: log progress every this many items (0: only at the end).
        engines: where a converted backbone is kept between calls (None: converted for this
            call only).

    Returns:
        the featurize result (failed items are in ``failures``) and the backbone's name.
    """
    backbone = backbone or build_backbone(settings.model)
    if isinstance(backbone, TorchBackbone):
        backbone = for_inference(backbone, settings.model, settings.store.data_dir, engines)
    cache = EmbeddingCache(settings.store.data_dir / "embeddings")
    result = featurize(
        items,
        backbone,
        cache,
        batch_size=settings.model.batch_size,
        known=known,
        workers=settings.images.fetch_workers,
        progress=progress,
        log_every=log_every,
    )
    return result, backbone.name


def project_backbone(
    settings: Settings,
    project_id: int,
    cfg: LabelConfig,
    tasks: Sequence[Task],
    targets: Targets,
    fetch: Callable[[str], bytes],
    *,
    engines: Engines | None = None,
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
    readable = embed_items(settings, labeled, backbone=base, engines=engines)[0].embeddings
    keep = np.array([int(t) in readable for t in targets.task_ids], dtype=bool)
    used = Targets(targets.task_ids[keep], targets.y[keep])
    try:
        check_enough(used, cfg.multiple)
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
