"""Who may call what, checked before every request from the route's :class:`Operation`.

- Label Studio's calls (``/health``, ``/setup``, ``/predict``, ``/webhook``): HTTP basic auth with
  ``server.basic_auth_user``/``basic_auth_password`` when both are set.
- The admin API and cycles: ``Authorization: Bearer <token>`` with a token of
  ``server.admin_tokens`` (its name is recorded where changes are recorded).
- The dashboard, its thumbnails and the diagnosis: the same admin tokens, as a bearer token or,
  for browsers, as basic auth with the token's name as user and the token as password.
- ``/metrics``: ``server.metrics_token`` (read-only, for scrapers) or an admin token, as bearer.
- A route without a declared operation needs an admin token (closed by default).
Without admin tokens the routes that need one answer 403 (disabled). Secrets are compared in
constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from flask import current_app, g, request
from pydantic import SecretStr

from backend.api.errors import ApiError
from backend.api.operations import Access, operation_of
from backend.settings import ServerSettings


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def token_name(tokens: Mapping[str, SecretStr], given: str) -> str | None:
    """The name of the token equal to ``given`` (every one compared, in constant time)."""
    found = None
    for name, secret in tokens.items():
        expected = secret.get_secret_value()
        if _equal(given, expected) and expected and found is None:
            found = name
    return found


def _bearer() -> str | None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def _basic() -> tuple[str, str] | None:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return None
    return auth.username or "", auth.password or ""


def _unauthorized(detail: str, challenge: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def _label_studio(server: ServerSettings) -> None:
    expected = server.basic_auth
    if expected is None:
        return
    given = _basic()
    if given is not None and _equal(given[0], expected[0]) & _equal(given[1], expected[1]):
        return
    raise _unauthorized("valid HTTP basic auth credentials required", 'Basic realm="labelloop"')


def _disabled() -> ApiError:
    return ApiError(
        403,
        "forbidden",
        "this route needs an admin token and none is configured: set server.admin_tokens "
        "(name: token) in a config file or LABELLOOP_SERVER__ADMIN_TOKENS",
    )


def _admin(server: ServerSettings, *, browser: bool) -> None:
    tokens = server.admin_tokens
    if not tokens:
        raise _disabled()
    bearer = _bearer()
    name = token_name(tokens, bearer) if bearer is not None else None
    basic = _basic() if browser and name is None else None
    if basic is not None:
        by_password = token_name(tokens, basic[1])
        name = by_password if by_password is not None and _equal(basic[0], by_password) else None
    if name is None:
        if browser:
            raise _unauthorized(
                "an admin token is required (bearer, or basic auth: token name and token)",
                'Basic realm="labelloop dashboard"',
            )
        raise _unauthorized("a valid admin bearer token is required", 'Bearer realm="labelloop"')
    g.admin_token_name = name


def _metrics(server: ServerSettings) -> None:
    bearer = _bearer()
    metrics = server.metrics_token.get_secret_value() if server.metrics_token else ""
    if bearer is not None and metrics and _equal(bearer, metrics):
        return
    if not metrics and not server.admin_tokens:
        raise ApiError(
            403,
            "forbidden",
            "metrics need a token and none is configured: set server.metrics_token "
            "(or server.admin_tokens)",
        )
    if bearer is not None and token_name(server.admin_tokens, bearer) is not None:
        return
    raise _unauthorized(
        "a valid metrics or admin bearer token is required", 'Bearer realm="labelloop"'
    )


def access_of_request() -> Access | None:
    """The access rule of the route being requested (None: no route matched, a 404/405)."""
    if request.endpoint is None or request.url_rule is None:
        return None
    found = operation_of(current_app.view_functions.get(request.endpoint))
    return found.access if found is not None else "admin"


def check_access(server: ServerSettings) -> None:
    """Raise a 401/403 :class:`ApiError` unless the request may call its route."""
    access = access_of_request()
    if access is None or access == "public":
        return
    if access == "labelstudio":
        _label_studio(server)
    elif access == "metrics":
        _metrics(server)
    else:
        _admin(server, browser=access == "dashboard")
