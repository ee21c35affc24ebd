"""Cycle status and manual triggers: ``/api/projects/<id>/cycles``."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from backend.app import error_response, services
from backend.store import cycles
from backend.store.models import utcnow

bp = Blueprint("cycles", __name__, url_prefix="/api/projects")


@bp.get("/<int:project_id>/cycles")
def list_cycles(project_id: int) -> Response:
    """The current state (idle, queued, running with stage and progress, failed) and history."""
    limit = request.args.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        return error_response(400, "bad_request", "'limit' must be an integer from 1 to 500")
    with services().store.session() as session:
        state = cycles.current_state(session, project_id, now=utcnow()).to_dict()
        history = [cycles.to_dict(c) for c in cycles.history(session, project_id, int(limit))]
    return jsonify({"project": project_id, "state": state, "cycles": history})


@bp.post("/<int:project_id>/cycles")
def request_cycle(project_id: int) -> Response:
    """Ask for a cycle now; it joins an already queued one. Runs on the deployment's scheduler."""
    svc = services()
    if svc.loop is not None:
        cycle_id = svc.loop.request(project_id, "manual")
    else:  # a web worker in scale-out mode: the scheduler process picks the request up
        now = utcnow()
        with svc.store.session() as session:
            cycle_id = cycles.request(session, project_id, "manual", due_at=now, now=now).id
    response = jsonify({"project": project_id, "cycle": cycle_id, "state": "queued"})
    response.status_code = 202
    return response
