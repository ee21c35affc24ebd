"""Admin API: per-project settings, their history, and preview. Admin bearer tokens only.

Every route needs ``Authorization: Bearer <token>`` with a token from ``server.admin_tokens``
(name -> token, checked by :mod:`backend.api.access`); the token's name is recorded in the
settings history. Without configured tokens the admin API is disabled (403).
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from backend.api.errors import ApiError
from backend.api.operations import operation
from backend.api.requests import body, query
from backend.api.schemas import HistoryQuery, PreviewRequest, SettingsPatch
from backend.api.services import services
from backend.loop.preview import preview
from backend.loop.targets import NotEnoughLabels
from backend.settings import SettingsError
from backend.store.project_settings import (
    describe,
    error_fields,
    project_history,
    set_project_settings,
)

bp = Blueprint("admin", __name__, url_prefix="/api/projects")


def _invalid(exc: SettingsError) -> ApiError:
    return ApiError(422, "invalid_settings", str(exc), extra={"fields": error_fields(exc)})


@bp.get("/<id:project_id>/settings")
@operation("Effective values, the project's overrides and the config defaults.", access="admin")
def get_settings(project_id: int) -> Response:
    svc = services()
    try:
        return jsonify(describe(svc.store, svc.settings, project_id))
    except SettingsError as exc:  # a stored override the current defaults no longer accept
        raise _invalid(exc) from None


@bp.patch("/<id:project_id>/settings")
@operation(
    'Apply nested changes ({"strategy": {"batch_size": 50}}); used from the next cycle.',
    access="admin",
    body=SettingsPatch,
)
def patch_settings(project_id: int) -> Response:
    changes = body(SettingsPatch).changes()
    svc = services()
    try:
        set_project_settings(
            svc.store, svc.settings, project_id, changes, token_name=g.admin_token_name
        )
    except SettingsError as exc:
        raise _invalid(exc) from None
    return jsonify(describe(svc.store, svc.settings, project_id))


@bp.get("/<id:project_id>/settings/history")
@operation("Who changed what and when, newest first.", access="admin", query=HistoryQuery)
def settings_history(project_id: int) -> Response:
    limit = query(HistoryQuery).limit
    history = project_history(services().store, project_id, limit=limit)
    return jsonify({"project": project_id, "history": history})


@bp.post("/<id:project_id>/preview")
@operation(
    "The top N items proposed settings would queue, with today's overlap; changes nothing.",
    access="admin",
    body=PreviewRequest,
)
def preview_settings(project_id: int) -> Response:
    request = body(PreviewRequest)
    svc = services()
    try:
        served = svc.models.get(project_id)
        return jsonify(
            preview(
                svc.store,
                svc.settings,
                project_id,
                request.changes(),
                top=request.top,
                served=served,
            )
        )
    except SettingsError as exc:
        raise _invalid(exc) from None
    except NotEnoughLabels as exc:
        raise ApiError(409, "not_ready", str(exc)) from None
