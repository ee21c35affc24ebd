"""The diagnosis of a project: ``/api/projects/<id>/diagnosis`` (JSON) and ``/dashboard/<id>``.

The diagnosis is written by every cycle (:func:`backend.diagnosis.record.write_diagnosis`); these
routes only read it. Before a project's first cycle the JSON answers 404 and the page says what
will appear and what starts the first cycle. Thumbnails are fetched through the image resolver
(so the same rules on allowed hosts and sizes apply), shrunk, and cached on disk keyed by the
image reference.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from flask import Blueprint, Response, jsonify, send_file
from PIL import Image

from backend.api.errors import error_response
from backend.api.operations import operation
from backend.api.services import Services, services
from backend.diagnosis.explained import Explained, explain_task
from backend.diagnosis.page import Links
from backend.diagnosis.view import diagnosis_view
from backend.files import atomic_write
from backend.labelstudio.images import ImageError, decode_image
from backend.loop.sync import load_snapshot
from backend.model.backbones import TorchBackbone
from backend.model.engines import RuntimeBackbone
from backend.settings import LoopSettings, SettingsError
from backend.store import cycle_records
from backend.store.models import Project, Task
from backend.store.project_settings import effective_settings

log = logging.getLogger(__name__)
bp = Blueprint("dashboard", __name__)

THUMB_PX = 96
NOT_YET = "no diagnosis yet: it is written at the end of the project's first cycle"


@bp.get("/api/projects/<id:project_id>/diagnosis")
@operation("The diagnosis as JSON (404 before the first cycle).", access="dashboard")
def diagnosis_json(project_id: int) -> Response:
    """The diagnosis with the learning curve, Label Studio links and thumbnail URLs."""
    svc = services()
    data = diagnosis_view(svc.settings, svc.store, project_id)
    if data is None:
        return error_response(404, "not_found", NOT_YET)
    return jsonify(data.model_dump(mode="json"))


@bp.get("/dashboard/<id:project_id>")
@operation("The dashboard page.", access="dashboard", content_type="text/html")
def dashboard(project_id: int) -> Response:
    """The dashboard page (server-rendered HTML, inline SVG)."""
    svc = services()
    started = time.perf_counter()
    data = diagnosis_view(svc.settings, svc.store, project_id)
    if data is None:
        return _html(not_yet_page(svc, project_id), 200)
    response = _html(svc.pages.dashboard(data, project_id), 200)
    log.info("dashboard p%d rendered in %.3f s", project_id, time.perf_counter() - started)
    return response


def _html(page: str, status: int) -> Response:
    response = Response(page, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
    )
    return response


def not_yet_page(svc: Services, project_id: int) -> str:
    """The page before the first diagnosis: the loop's state now and what starts the cycle."""
    with svc.store.session() as session:
        known = session.get(Project, project_id) is not None
        status = cycle_records.current_state(session, project_id, now=datetime.now(UTC)).to_dict()
    try:
        loop = effective_settings(svc.store, svc.settings, project_id).loop
    except SettingsError:
        loop = svc.settings.loop
    return svc.pages.not_yet(
        project_id, known=known, status=status, when=first_cycle_triggers(loop, project_id)
    )


def first_cycle_triggers(loop: LoopSettings, project_id: int) -> list[str]:
    """Sentences naming what starts a project's cycle, from its loop settings."""
    when = [
        f"after {loop.retrain_after} new or changed annotations (loop.retrain_after), "
        f"{loop.debounce_s:g} s after the last of them;",
        "when someone presses Start training on this ML backend in the project's Model "
        f"settings in Label Studio, or runs labelloop cycle --project {project_id};",
    ]
    if loop.schedule_cron:
        when.append(f"on the schedule {loop.schedule_cron} (loop.schedule_cron).")
    elif loop.schedule_interval_minutes:
        when.append(
            f"every {loop.schedule_interval_minutes} minutes on the schedule "
            "(loop.schedule_interval_minutes)."
        )
    return when


@bp.get("/dashboard/<id:project_id>/explain/<id:task_id>.png")
@operation(
    "A task's explanation image (the image, Grad-CAM, occlusion).",
    access="dashboard",
    content_type="image/png",
)
def explanation_image(project_id: int, task_id: int) -> Response:
    """The task's explanation image (as the model saw it, Grad-CAM, occlusion), cached."""
    found = _explained(services(), project_id, task_id)
    if isinstance(found, Response):
        return found
    return send_file(found.png, mimetype="image/png", max_age=3600)


@bp.get("/dashboard/<id:project_id>/explain/<id:task_id>")
@operation("A task's explanation page.", access="dashboard", content_type="text/html")
def explanation_page(project_id: int, task_id: int) -> Response:
    """The explanation page: the maps side by side and the nearest labeled examples."""
    svc = services()
    found = _explained(svc, project_id, task_id)
    if isinstance(found, Response):
        return found
    links = Links(svc.settings.label_studio.browser_url, project_id)
    page = svc.pages.explanation(found.info, project_id, links)
    return _html(page, 200)


def _explained(svc: Services, project_id: int, task_id: int) -> Explained | Response:
    """The explanation, or the JSON error response saying why there is none."""
    with svc.store.session() as session:
        task = session.get(Task, task_id)
        ref = task.image_ref if task is not None and task.project_id == project_id else None
    if not ref:
        return error_response(404, "not_found", f"task {task_id} has no image in this project")
    served = svc.models.get(project_id)
    if served is None:
        return error_response(404, "no_model", "no model yet: explanations need a trained model")
    settings = effective_settings(svc.store, svc.settings, project_id)
    data_dir = settings.store.data_dir
    backbone = svc.models.backbone_for(
        settings.model, served.model.backbone or "", data_dir, project_id
    )
    if served.model.backbone and served.model.backbone != backbone.name:
        detail = "the model's backbone is no longer the one the settings name"
        return error_response(409, "backbone_changed", detail)
    cached_as = backbone.name  # the embeddings' cache key (a runtime may add +int8)
    if isinstance(backbone, RuntimeBackbone):  # the maps need torch's gradients: its weights
        backbone = backbone.base
    if not isinstance(backbone, TorchBackbone):
        return error_response(409, "no_torch_backbone", "the maps need a torch backbone")
    try:
        image = decode_image(
            svc.image_resolver().fetch(ref), max_pixels=svc.settings.images.max_pixels
        )
    except ImageError as exc:
        return error_response(404, "image_unavailable", exc.reason)
    snap = load_snapshot(svc.store, project_id)
    return explain_task(
        image=image,
        task_id=task_id,
        project_id=project_id,
        version=served.version,
        backbone=backbone,
        model=served.model,
        store=svc.store,
        data_dir=data_dir,
        targets=snap.targets,
        classes=tuple(snap.cfg.labels),
        cached_as=cached_as,
    )


@bp.get("/dashboard/<id:project_id>/thumb/<id:task_id>.png")
@operation("A task's thumbnail.", access="dashboard", content_type="image/png")
def thumbnail(project_id: int, task_id: int) -> Response:
    """A small PNG of the task's image; 404 JSON when the task or its image is unavailable."""
    svc = services()
    with svc.store.session() as session:
        task = session.get(Task, task_id)
        ref = task.image_ref if task is not None and task.project_id == project_id else None
    if not ref:
        return error_response(404, "not_found", f"task {task_id} has no image in this project")
    try:
        path = cached_thumbnail(svc, project_id, task_id, ref)
    except ImageError as exc:
        log.info("thumbnail p%d t%d: %s", project_id, task_id, exc.reason)
        return error_response(404, "image_unavailable", exc.reason)
    response = send_file(path, mimetype="image/png", max_age=3600)
    return response


def cached_thumbnail(svc: Services, project_id: int, task_id: int, ref: str) -> Path:
    """The thumbnail's file, made on first use; a changed image reference makes a new one."""
    key = hashlib.sha256(ref.encode()).hexdigest()[:16]
    path = svc.settings.store.data_dir / "thumbs" / f"p{project_id}" / f"{task_id}-{key}.png"
    if path.exists():
        return path
    image = decode_image(svc.image_resolver().fetch(ref), max_pixels=svc.settings.images.max_pixels)
    image.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    with atomic_write(path) as handle:  # two requests for one thumbnail may race here
        handle.write(buffer.getvalue())
    return path
