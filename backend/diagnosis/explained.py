"""Explanations of one task's prediction, computed on demand and cached per (task, model version)
under ``<data_dir>/explain/p<project>/``: the three-panel image (the task as the model saw it,
Grad-CAM, occlusion) and what the page shows beside it (prediction, given label, the labeled items
nearest in embedding space). Cost per task: one backward pass and GRID^2 + 1 forward passes of
the backbone, plus one cosine against the labeled items' cached embeddings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from backend.diagnosis.explain import explain, explanation_png
from backend.diagnosis.schema import Neighbour, TaskExplanation
from backend.files import atomic_write
from backend.loop.targets import Targets
from backend.model.backbones import TorchBackbone
from backend.model.cache import EmbeddingCache
from backend.model.train import TrainedModel
from backend.store import task_images
from backend.store.db import Store

#: Similar labeled examples shown.
NEIGHBOURS = 6


@dataclass(frozen=True)
class Explained:
    png: Path
    info: TaskExplanation


def cache_paths(data_dir: Path, project_id: int, task_id: int, version: str) -> tuple[Path, Path]:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", version)
    base = data_dir / "explain" / f"p{project_id}" / f"{task_id}-{safe}"
    return base.with_suffix(".png"), base.with_suffix(".json")


def nearest_labeled(
    store: Store,
    data_dir: Path,
    backbone_name: str,
    model: TrainedModel,
    embedding: NDArray[np.floating[Any]],
    targets: Targets,
    classes: tuple[str, ...],
    exclude: int,
) -> list[Neighbour]:
    """The labeled items closest to ``embedding`` (cosine in the head's standardized space)."""
    ids = [int(t) for t in targets.task_ids if int(t) != exclude]
    with store.session() as session:
        known = task_images.lookup(session, ids)
    usable = [t for t in ids if t in known and known[t][1] == backbone_name]
    vectors = EmbeddingCache(data_dir / "embeddings").get_many(
        {known[t][0] for t in usable}, backbone_name
    )
    usable = [t for t in usable if known[t][0] in vectors]
    if not usable:
        return []

    def unit(x: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        z = (np.asarray(x, dtype=np.float64) - model.feature_mean) / model.feature_std
        unit: NDArray[np.float64] = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        return unit

    matrix = unit(np.stack([vectors[known[t][0]] for t in usable]))
    sims = matrix @ unit(embedding)
    label_of = dict(zip(targets.task_ids.tolist(), np.asarray(targets.y).tolist(), strict=True))
    out = []
    for row in np.argsort(-sims, kind="stable")[:NEIGHBOURS]:
        task = usable[int(row)]
        y = label_of[task]
        label = (
            ", ".join(classes[i] for i in np.flatnonzero(y)) if isinstance(y, list) else classes[y]
        )
        out.append(Neighbour(task=task, label=label, similarity=round(float(sims[row]), 4)))
    return out


def explain_task(
    *,
    image: Image.Image,
    task_id: int,
    project_id: int,
    version: str,
    backbone: TorchBackbone,
    model: TrainedModel,
    store: Store,
    data_dir: Path,
    targets: Targets,
    classes: tuple[str, ...],
    cached_as: str | None = None,
) -> Explained:
    """The cached explanation of ``task_id`` under ``version``, computed when missing.

    ``cached_as``: the backbone name the labeled items' embeddings are cached under (default the
    backbone's own).
    """
    png, meta = cache_paths(data_dir, project_id, task_id, version)
    if png.exists() and meta.exists():
        return Explained(png, TaskExplanation.model_validate_json(meta.read_text()))
    result = explain(backbone, model, image)
    given = None
    if task_id in set(targets.task_ids.tolist()):
        y = np.asarray(targets.y)[targets.task_ids.tolist().index(task_id)]
        given = ", ".join(classes[i] for i in np.flatnonzero(y)) if y.ndim else classes[int(y)]
    info = TaskExplanation(
        task=task_id,
        model_version=version,
        predicted=classes[result.predicted],
        confidence=round(result.confidence, 4),
        given=given,
        neighbours=nearest_labeled(
            store,
            data_dir,
            cached_as or backbone.name,
            model,
            result.embedding,
            targets,
            classes,
            task_id,
        ),
    )
    with atomic_write(png) as handle:
        handle.write(explanation_png(image, result, backbone.image_size))
    with atomic_write(meta) as handle:
        handle.write(info.model_dump_json().encode())
    return Explained(png, info)
