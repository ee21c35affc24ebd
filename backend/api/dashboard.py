"""The diagnosis of a project: ``/api/projects/<id>/diagnosis`` (JSON) and ``/dashboard/<id>``.

The diagnosis is written by every cycle (:func:`backend.diagnostics.write_diagnosis`); these
routes only read it. Thumbnails are fetched through the image resolver (so the same rules on
allowed hosts and sizes apply), shrunk, and cached on disk keyed by the image reference.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path

from flask import Blueprint, Response, jsonify, send_file
from PIL import Image

from backend.app import Services, error_response, services
from backend.dashboard_page import render_page
from backend.diagnostics import diagnosis_view
from backend.files import atomic_write
from backend.labelstudio.images import ImageError, decode_image
from backend.store.models import Task

log = logging.getLogger(__name__)
bp = Blueprint("dashboard", __name__)

THUMB_PX = 96
NOT_YET = "no diagnosis yet: it is written at the end of the project's first cycle"


@bp.get("/api/projects/<int:project_id>/diagnosis")
def diagnosis_json(project_id: int) -> Response:
    """The diagnosis with the learning curve, Label Studio links and thumbnail URLs."""
    svc = services()
    data = diagnosis_view(svc.settings, svc.store, project_id)
    if data is None:
        return error_response(404, "not_found", NOT_YET)
    return jsonify(data)


@bp.get("/dashboard/<int:project_id>")
def dashboard(project_id: int) -> Response:
    """The dashboard page (server-rendered HTML, inline SVG)."""
    svc = services()
    started = time.perf_counter()
    data = diagnosis_view(svc.settings, svc.store, project_id)
    if data is None:
        return error_response(404, "not_found", NOT_YET)
    response = Response(render_page(data, project_id), mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
    )
    log.info("dashboard p%d rendered in %.3f s", project_id, time.perf_counter() - started)
    return response


@bp.get("/dashboard/<int:project_id>/thumb/<int:task_id>.png")
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
