"""The ML backend endpoints exactly as Label Studio 1.23 calls them.

``/health`` and ``/webhook`` do no work beyond one small query or one durable insert: Label Studio
waits 1 s for each, and a webhook is sent inside the annotator's save request.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from backend.app import error_response, services
from backend.inbox import HANDLED_ACTIONS, BadEvent, parse_event
from backend.labelstudio.config import UnsupportedConfig, parse_label_config
from backend.metrics import CONTENT_TYPE
from backend.predict import predict_tasks
from backend.store import repo
from backend.store.models import Project

log = logging.getLogger(__name__)
bp = Blueprint("ml", __name__)
UNTRAINED = "untrained"


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    project: str | int
    schema_: str = Field(alias="schema", min_length=1)
    hostname: str | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tasks: list[dict[str, Any]]
    project: str | int | None = None
    label_config: str | None = None


class BadRequest(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    return error_response(400, "bad_request", exc.detail)


def _json_body() -> Any:
    raw = request.get_data(cache=True)
    if not raw:
        raise BadRequest("request body is empty; a JSON object is required")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _validated(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"'{where}': {first['msg']}") from None


def project_id_of(value: str | int | None) -> int | None:
    """Label Studio sends ``"<id>.<created unix ts>"`` to /setup and /predict."""
    if value is None:
        return None
    head = str(value).split(".", 1)[0]
    if not head.isdigit():
        raise BadRequest(f"'project' must look like '<id>.<timestamp>', got {str(value)[:40]!r}")
    return int(head)


@bp.get("/health")
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
def setup() -> Response:
    body = _validated(SetupRequest, _json_body())
    pid = project_id_of(body.project)
    if pid is None:
        raise BadRequest("'project' is required")
    try:
        parse_label_config(body.schema_)
    except UnsupportedConfig as exc:
        return error_response(422, "unsupported_label_config", str(exc))
    with services().store.session() as session:
        project = repo.ensure_project(session, pid)
        repo.set_label_config(session, project, body.schema_)
        project.ls_hostname = body.hostname or project.ls_hostname
        version = project.model_version or UNTRAINED
    log.info("setup for project %s: %d labels", pid, len(project.labels))
    return jsonify({"model_version": version})


@bp.post("/predict")
def predict() -> Response:
    body = _validated(PredictRequest, _json_body())
    tasks = body.tasks
    if any(not isinstance(t.get("id"), int) for t in tasks):
        raise BadRequest("every task needs an integer 'id'")
    pid = project_id_of(body.project)
    if pid is None and tasks:
        pid = tasks[0].get("project") if isinstance(tasks[0].get("project"), int) else None
    if pid is None:
        raise BadRequest("'project' is required")
    try:
        results = predict_tasks(services(), pid, tasks, label_config=body.label_config)
    except UnsupportedConfig as exc:
        return error_response(422, "unsupported_label_config", str(exc))
    return jsonify({"results": results})


@bp.post("/webhook")
def webhook() -> Response:
    svc = services()
    raw = request.get_data(cache=True)
    try:
        event = parse_event(_json_body())
    except BadEvent as exc:
        raise BadRequest(str(exc)) from None
    project = str(event.project_id)
    if event.action not in HANDLED_ACTIONS:
        return jsonify({"status": "ignored", "action": event.action})
    with svc.store.session() as session:
        stored = repo.record_delivery(
            session,
            key=repo.delivery_key(raw),
            action=event.action,
            project_id=event.project_id,
            payload=event.payload,
        )
    counter = svc.metrics.events_received if stored else svc.metrics.events_duplicate
    counter.labels(project, event.action).inc()
    if svc.worker is not None:
        svc.worker.notify()
    log.info("webhook %s project %s %s", event.action, project, "stored" if stored else "duplicate")
    return jsonify({"status": "stored" if stored else "duplicate", "action": event.action})


@bp.get("/metrics")
def metrics() -> Response:
    return Response(services().metrics.render(), mimetype=CONTENT_TYPE.split(";")[0])
