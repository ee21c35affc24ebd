"""The one error helper of the API: every error leaves as JSON ``{"error", "detail"}``.

Handlers raise :class:`ApiError` (or let a werkzeug ``HTTPException`` through); the app turns
both into the same JSON shape with the right status, never a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, Unauthorized

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered to the client as it is.

    Args:
        status: the HTTP status (4xx).
        error: a short machine-readable name (``bad_request``, ``not_found``...).
        detail: what was wrong, for a person.
        extra: more keys of the JSON body (``fields`` of a settings error).
        headers: response headers (``WWW-Authenticate`` of a 401).
    """

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.extra, self.headers = extra or {}, headers or {}


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "bad_request", detail)


def error_response(
    status: int, error: str, detail: str, *, extra: dict[str, Any] | None = None
) -> Response:
    """The JSON error body every failure of the API answers with."""
    response = jsonify({"error": error, "detail": detail, **(extra or {})})
    response.status_code = status
    return response


def _handle_api_error(exc: ApiError) -> Response:
    response = error_response(exc.status, exc.error, exc.detail, extra=exc.extra)
    response.headers.update(exc.headers)
    return response


def _handle_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    name = (exc.name or "error").lower().replace(" ", "_")
    response = error_response(status, name, exc.description or name)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Basic realm="labelloop"'
    return response


def _handle_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", f"{type(exc).__name__}; see the server log")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(Exception, _handle_unexpected)
