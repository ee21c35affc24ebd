"""Cycle status and manual triggers: ``/api/projects/<id>/cycles`` (admin bearer token)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from backend.api.errors import ApiError
from backend.api.operations import operation
from backend.api.requests import query
from backend.api.schemas import LimitQuery
from backend.api.services import services
from backend.loop.push import review_outcomes
from backend.store import cycle_records, repo
from backend.store.models import utcnow

bp = Blueprint("cycles", __name__, url_prefix="/api/projects")


@bp.get("/<id:project_id>/cycles")
@operation(
    "The current state (idle, queued, running with stage and progress, failed), the history, "
    "and the project's inbox (pending and set-aside events).",
    access="admin",
    query=LimitQuery,
)
def list_cycles(project_id: int) -> Response:
    limit = query(LimitQuery).limit
    with services().store.session() as session:
        state = cycle_records.current_state(session, project_id, now=utcnow()).to_dict()
        history = [
            cycle_records.to_dict(c) for c in cycle_records.history(session, project_id, limit)
        ]
        counts = repo.project_counts(session, project_id)
    inbox = {"pending": counts.pending_events, "set_aside": counts.set_aside_events}
    review = review_outcomes(services().store, project_id)
    for cycle in history:  # what reviewers did with the flags each cycle raised
        cycle["review"] = {
            kind: entry["cycles"].get(str(cycle["id"])) for kind, entry in review.items()
        }
    totals = {kind: entry["total"] for kind, entry in review.items()}
    return jsonify(
        {
            "project": project_id,
            "state": state,
            "inbox": inbox,
            "cycles": history,
            "review": totals,
        }
    )


@bp.post("/<id:project_id>/cycles")
@operation(
    "Ask for a cycle now; it joins an already queued one. Runs on the deployment's scheduler.",
    access="admin",
    responses={202: "queued"},
)
def request_cycle(project_id: int) -> Response:
    svc = services()
    with svc.store.session() as session:
        if not repo.project_known(session, project_id):
            raise ApiError(404, "not_found", f"project {project_id} is not set up on this backend")
    if svc.loop is not None:
        cycle_id = svc.loop.request(project_id, "manual")
    else:  # a web worker in scale-out mode: the scheduler process picks the request up
        now = utcnow()
        with svc.store.session() as session:
            cycle_id = cycle_records.request(session, project_id, "manual", due_at=now, now=now).id
    response = jsonify({"project": project_id, "cycle": cycle_id, "state": "queued"})
    response.status_code = 202
    return response
