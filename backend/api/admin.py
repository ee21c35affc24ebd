"""Admin API: per-project settings, their history, and preview. Bearer tokens only.

Every route needs ``Authorization: Bearer <token>`` with a token from ``server.admin_tokens``
(name -> token); the token's name is recorded in the settings history. Without configured tokens
the admin API is disabled (403). HTTP basic auth of the ML endpoints does not apply here.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import SecretStr

from backend.app import error_response, services
from backend.preview import preview
from backend.project_settings import (
    describe,
    error_fields,
    project_history,
    set_project_settings,
)
from backend.settings import SettingsError
from backend.training import NotEnoughLabels

bp = Blueprint("admin", __name__, url_prefix="/api/projects")
MAX_TOP = 1000


def token_name(tokens: Mapping[str, SecretStr], given: str) -> str | None:
    """The name of the admin token equal to ``given`` (compared in constant time), or None."""
    found = None
    for name, secret in tokens.items():
        expected = secret.get_secret_value().encode()
        if hmac.compare_digest(given.encode(), expected) and expected and found is None:
            found = name
    return found


@bp.before_request
def _require_admin_token() -> Response | None:
    tokens = services().settings.server.admin_tokens
    if not tokens:
        return error_response(
            403, "forbidden", "the admin API is disabled: no server.admin_tokens are configured"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    name = token_name(tokens, given.strip()) if scheme.lower() == "bearer" else None
    if name is None:
        response = error_response(401, "unauthorized", "a valid admin bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="labelloop admin"'
        return response
    g.admin_token_name = name
    return None


def _invalid(exc: SettingsError) -> Response:
    response = jsonify(
        {"error": "invalid_settings", "detail": str(exc), "fields": error_fields(exc)}
    )
    response.status_code = 422
    return response


def _json_object() -> dict[str, Any] | None:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


@bp.get("/<int:project_id>/settings")
def get_settings(project_id: int) -> Response:
    """Effective values, the project's overrides and the config defaults."""
    svc = services()
    try:
        return jsonify(describe(svc.store, svc.settings, project_id))
    except SettingsError as exc:  # a stored override the current defaults no longer accept
        return _invalid(exc)


@bp.patch("/<int:project_id>/settings")
def patch_settings(project_id: int) -> Response:
    """Apply nested changes (``{"strategy": {"batch_size": 50}}``); used from the next cycle."""
    body = _json_object()
    if body is None:
        return error_response(400, "bad_request", "the body must be a JSON object of sections")
    svc = services()
    try:
        set_project_settings(
            svc.store, svc.settings, project_id, body, token_name=g.admin_token_name
        )
    except SettingsError as exc:
        return _invalid(exc)
    return jsonify(describe(svc.store, svc.settings, project_id))


@bp.get("/<int:project_id>/settings/history")
def settings_history(project_id: int) -> Response:
    """Who changed what and when, newest first."""
    limit = request.args.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        return error_response(400, "bad_request", "'limit' must be an integer from 1 to 500")
    history = project_history(services().store, project_id, limit=int(limit))
    return jsonify({"project": project_id, "history": history})


@bp.post("/<int:project_id>/preview")
def preview_settings(project_id: int) -> Response:
    """The top N items proposed settings would queue, with today's overlap; changes nothing."""
    body = _json_object()
    if body is None:
        return error_response(400, "bad_request", "the body must be a JSON object of sections")
    top = body.pop("top", 20)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        return error_response(400, "bad_request", f"'top' must be an integer from 1 to {MAX_TOP}")
    svc = services()
    try:
        served = svc.models.get(project_id)
        return jsonify(preview(svc.store, svc.settings, project_id, body, top=top, served=served))
    except SettingsError as exc:
        return _invalid(exc)
    except NotEnoughLabels as exc:
        return error_response(409, "not_ready", str(exc))
