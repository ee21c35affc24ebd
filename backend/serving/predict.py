"""What ``/predict`` answers: one pre-annotation per task from the project's current model.

With a model, each task's image is embedded and the top label(s) returned.

Before a project has a model we answer ``{"results": []}``. Label Studio 1.23 then stores nothing
(it only stores predictions when it gets exactly one result per task) and asks again later, instead
of storing an empty or made-up prediction that would count as "predicted" in the Data Manager, stop
LS from asking again when the task is opened, and sort first in uncertainty sampling.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Protocol

import numpy as np

from backend.labelstudio.config import LabelConfig, parse_label_config
from backend.labelstudio.convert import prediction_item, task_image_ref
from backend.labelstudio.images import ImageResolver
from backend.loop import ingest
from backend.loop.contract import ServedModel
from backend.loop.embed import embed_items
from backend.loop.queue import queue_positions
from backend.model.annotation import predict_annotation
from backend.model.backbones import TorchBackbone
from backend.model.engines import for_inference
from backend.serving.registry import ModelRegistry
from backend.settings import Settings
from backend.store import task_images
from backend.store.db import Store
from backend.store.models import Project
from backend.store.project_settings import effective_settings

log = logging.getLogger(__name__)


class Serving(Protocol):
    """What answering ``/predict`` needs of the app's services."""

    settings: Settings
    store: Store
    models: ModelRegistry

    def image_resolver(self) -> ImageResolver: ...


def _missing_ref(ref: str | None) -> bytes:
    raise ValueError("task has no image reference")


def predict_with_model(
    svc: Serving, served: ServedModel, cfg: LabelConfig, tasks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One prediction per task, in order; a task whose image fails gets an empty result.

    Images are embedded with the backbone the model was trained on: the one the project's settings
    name, with the project's fine-tuned weights when it was trained in ``fine_tune`` mode (a model
    whose backbone can no longer be built is refused rather than fed wrong vectors).
    """
    settings = effective_settings(svc.store, svc.settings, served.project_id)
    backbone = svc.models.backbone_for(
        settings.model, served.model.backbone or "", settings.store.data_dir, served.project_id
    )
    if isinstance(backbone, TorchBackbone):
        backbone = for_inference(
            backbone, settings.model, settings.store.data_dir, svc.models.engines
        )
    if served.model.backbone and served.model.backbone != backbone.name:
        log.warning(
            "project %d: model %s was trained on %s but settings name %s; no predictions",
            served.project_id,
            served.version,
            served.model.backbone,
            backbone.name,
        )
        return []  # Label Studio then stores nothing and asks again after the next cycle
    resolver = svc.image_resolver()
    items, refs = [], {}
    for task in tasks:
        ref = task_image_ref(task, cfg)
        if ref:
            refs[int(task["id"])] = ref
        items.append(
            (int(task["id"]), partial(resolver.fetch, ref) if ref else partial(_missing_ref, ref))
        )
    with svc.store.session() as session:
        known = task_images.known_by_ref(session, refs)  # embedded by a cycle: nothing to fetch
    result, _ = embed_items(settings, items, backbone=backbone, known=known, log_every=0)
    ok = [int(t["id"]) for t in tasks if int(t["id"]) in result.embeddings]
    rows = np.stack([result.embeddings[i] for i in ok]) if ok else None
    probs = served.model.predict_proba(rows) if rows is not None else np.zeros((0, 0))
    by_task = dict(zip(ok, probs, strict=True))
    # Label Studio stores what we answer under the current version, so it joins the queue that
    # "Label All Tasks" serves by ascending score: a task of our queue gets its queue position.
    positions = queue_positions(settings, served.project_id, served.version, list(by_task))
    out = []
    for task in tasks:
        row = by_task.get(int(task["id"]))
        if row is None:
            out.append({"result": [], "score": 0.0, "model_version": served.version})
            continue
        labels, score = predict_annotation(
            row,
            served.model.classes,
            multilabel=served.model.multilabel,
            thresholds=served.model.thresholds,
        )
        score = positions.get(int(task["id"]), score)
        out.append(prediction_item(labels, score, served.version, cfg))
    log.info(
        "predict project %d: %d tasks, %d images failed",
        served.project_id,
        len(tasks),
        len(result.failures),
    )
    return out


def project_label_config(svc: Serving, project_id: int, label_config: str | None) -> LabelConfig:
    """The project's parsed config: the stored one, else the one sent with the request.

    A project this backend was never set up for gets no row: its config is only parsed.

    Raises:
        UnsupportedConfig: neither is an image classification config we support.
    """
    with svc.store.session() as session:
        project = session.get(Project, project_id)
        if project is None:
            return parse_label_config(label_config or "")
        cfg = ingest.project_config(project)
        if cfg is None and label_config:
            cfg = ingest.set_label_config(session, project, label_config)
    if cfg is None:
        return parse_label_config(label_config or "")
    return cfg


def predict_tasks(
    svc: Serving, project_id: int, tasks: list[dict[str, Any]], *, label_config: str | None
) -> list[dict[str, Any]]:
    """One result per task in request order, or an empty list while no model exists."""
    cfg = project_label_config(svc, project_id, label_config)
    served = svc.models.get(project_id)
    if served is None or not tasks:
        log.info("predict project %d: %d tasks, no model yet", project_id, len(tasks))
        return []
    return predict_with_model(svc, served, cfg, tasks)
