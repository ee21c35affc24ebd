"""The train stage: fit a project's model on its labels and embeddings, store and activate versions.

:func:`train_project` (``labelloop train``) runs targets, embed and fit from the store; the cycle
calls the stages one by one. Label Studio stays the source of truth; this reads the
store (call reconcile first) and writes a checkpoint plus a ``model_versions`` row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from backend.labelstudio.config import LabelConfig
from backend.loop import ingest
from backend.loop.contract import Snapshot, Trained
from backend.loop.embed import embed_tasks, project_backbone
from backend.loop.targets import NotEnoughLabels, Targets, check_enough, consensus_targets
from backend.model.backbones import (
    weights_path,
)
from backend.model.checkpoint import save_checkpoint
from backend.model.featurize import stack_rows
from backend.model.train import TrainedModel, train_model
from backend.settings import Settings
from backend.store import repo
from backend.store.db import Store
from backend.store.models import ModelVersion, Project, Task

log = logging.getLogger(__name__)


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


def fit(
    settings: Settings,
    cfg: LabelConfig,
    targets: Targets,
    embeddings: Mapping[int, NDArray[np.floating[Any]]],
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
    check_enough(used, cfg.multiple)
    x = stack_rows(embeddings, used.task_ids)
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
    prune_checkpoints(settings, store, project_id)


def train_project(
    settings: Settings, store: Store, project_id: int, fetch: Callable[[str], bytes]
) -> TrainOutcome:
    """Featurize the labeled tasks, train, write the checkpoint and make it the current model."""
    cfg, tasks, targets = _load_inputs(store, project_id)
    check_enough(targets, cfg.multiple)
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


def prune_checkpoints(settings: Settings, store: Store, project_id: int) -> list[str]:
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


def train_stage(
    settings: Settings,
    store: Store,
    project_id: int,
    snap: Snapshot,
    embeddings: Mapping[int, NDArray[np.floating[Any]]],
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
