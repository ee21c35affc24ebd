"""The ML backend endpoints exactly as Label Studio 1.23 calls them.

``/health`` and ``/webhook`` do no work beyond one small query or one durable insert: Label Studio
waits 1 s for each, and a webhook is sent inside the annotator's save request. Only projects this
backend was set up for (Label Studio's ``/setup`` when it connects a backend, ``labelloop
connect``, a sync) get rows: webhooks of any other project are acknowledged and ignored.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from backend.api.errors import ApiError, bad_request
from backend.api.operations import operation
from backend.api.prometheus import CONTENT_TYPE
from backend.api.requests import body, cached_body, json_body, parse_json, validated
from backend.api.schemas import MAX_ID, PredictRequest, SetupRequest, WebhookEvent
from backend.api.services import services
from backend.labelstudio.config import UnsupportedConfig, parse_label_config
from backend.loop import ingest
from backend.loop.inbox import HANDLED_ACTIONS, BadEvent, parse_event
from backend.serving.predict import predict_tasks
from backend.store import repo
from backend.store.db import is_transient
from backend.store.models import Project

log = logging.getLogger(__name__)
bp = Blueprint("ml", __name__)
UNTRAINED = "untrained"
_PROJECT = re.compile(r"([0-9]{1,19})(?:\.[0-9]*)?")


def project_id_of(value: str | int | None) -> int | None:
    """Label Studio sends ``"<id>.<created unix ts>"`` to /setup and /predict."""
    if value is None or isinstance(value, int):
        return value
    match = _PROJECT.fullmatch(value)
    if match is None or not 1 <= int(match[1]) <= MAX_ID:
        raise bad_request(f"'project' must look like '<id>.<timestamp>', got {value[:40]!r}")
    return int(match[1])


@bp.get("/health")
@operation(
    "Liveness for Label Studio: every project and the model version it serves.",
    access="labelstudio",
)
def health() -> Response:
    svc = services()
    with svc.store.session() as session:
        rows = session.execute(select(Project.id, Project.model_version)).all()
    return jsonify(
        {
            "status": "UP",
            "model_class": "labelloop",
            "projects": {str(pid): version or UNTRAINED for pid, version in rows},
        }
    )


@bp.post("/setup")
@operation(
    "Register a project with its label config (Label Studio calls it when connecting).",
    access="labelstudio",
    body=SetupRequest,
)
def setup() -> Response:
    request = body(SetupRequest)
    pid = project_id_of(request.project)
    if pid is None:
        raise bad_request("'project' is required")
    try:
        parse_label_config(request.schema_)
    except UnsupportedConfig as exc:
        raise ApiError(422, "unsupported_label_config", str(exc)) from None
    svc = services()
    with svc.store.write_session() as session:
        if not repo.project_known(session, pid):
            limit = svc.settings.server.max_projects
            if repo.project_count(session) >= limit:
                raise ApiError(
                    409,
                    "too_many_projects",
                    f"this backend already serves {limit} projects (server.max_projects)",
                )
        project = repo.ensure_project(session, pid)
        ingest.set_label_config(session, project, request.schema_)
        project.ls_hostname = request.hostname or project.ls_hostname
        version = project.model_version or UNTRAINED
    log.info("setup for project %s: %d labels", pid, len(project.labels))
    return jsonify({"model_version": version})


@bp.post("/predict")
@operation(
    "One pre-annotation per task, in order; no results before the project has a model.",
    access="labelstudio",
    body=PredictRequest,
)
def predict() -> Response:
    data = json_body()
    request = validated(PredictRequest, data)
    tasks = data["tasks"]  # as Label Studio sent them, now known to carry valid ids
    pid = project_id_of(request.project)
    if pid is None and tasks:
        first = tasks[0].get("project")
        pid = first if isinstance(first, int) and not isinstance(first, bool) else None
        pid = pid if pid is not None and 1 <= pid <= MAX_ID else None
    if pid is None:
        raise bad_request("'project' is required")
    try:
        results = predict_tasks(services(), pid, tasks, label_config=request.label_config)
    except UnsupportedConfig as exc:
        raise ApiError(422, "unsupported_label_config", str(exc)) from None
    return jsonify({"results": results})


@bp.post("/webhook")
@operation(
    "Store a Label Studio event durably and answer at once; it is applied later.",
    access="labelstudio",
    body=WebhookEvent,
)
def webhook() -> Response:
    svc = services()
    raw = cached_body()
    try:
        event = parse_event(parse_json(raw))
    except BadEvent as exc:
        raise bad_request(str(exc)) from None
    if event.action not in HANDLED_ACTIONS or event.project_id is None:
        return jsonify({"status": "ignored", "action": event.action})
    delivery = repo.Delivery(
        key=repo.delivery_key(raw),
        action=event.action,
        project_id=event.project_id,
        payload=event.payload,
        size=len(raw),
    )
    try:
        stored = svc.record_delivery(delivery)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("webhook %s not stored, the database is busy: %s", event.action, exc)
        raise ApiError(
            503,
            "unavailable",
            "the database is busy; nothing was stored, send it again",
            headers={"Retry-After": "1"},
        ) from None
    if stored is None:
        svc.metrics.events_unknown_project.inc()
        return jsonify({"status": "ignored", "action": event.action, "reason": "unknown project"})
    project = str(event.project_id)
    counter = svc.metrics.events_received if stored else svc.metrics.events_duplicate
    counter.labels(project, event.action).inc()
    if svc.worker is not None:
        svc.worker.notify()
    log.info("webhook %s project %s %s", event.action, project, "stored" if stored else "duplicate")
    return jsonify({"status": "stored" if stored else "duplicate", "action": event.action})


@bp.get("/metrics")
@operation(
    "Prometheus metrics.",
    access="metrics",
    responses={200: "Prometheus text format"},
    content_type="text/plain",
)
def metrics() -> Response:
    svc = services()
    with svc.store.session() as session:
        svc.metrics.inbox_set_aside.set(repo.set_aside_count(session))
    return Response(svc.metrics.render(), mimetype=CONTENT_TYPE.split(";")[0])
