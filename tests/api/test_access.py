"""Who may call what: Label Studio's calls, admin tokens, the dashboard's browser login, metrics."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, jsonify

from backend.api.app import create_app, shutdown
from backend.store import repo
from tests.conftest import make_settings

ADMIN = {"Authorization": "Bearer admin-secret"}
METRICS = {"Authorization": "Bearer scrape-secret"}
NEEDS_ADMIN = [
    ("get", "/api/projects/3/cycles"),
    ("post", "/api/projects/3/cycles"),
    ("get", "/api/projects/3/settings"),
    ("patch", "/api/projects/3/settings"),
    ("get", "/api/projects/3/settings/history"),
    ("post", "/api/projects/3/preview"),
]
DASHBOARD = ["/dashboard/3", "/dashboard/3/thumb/5.png", "/api/projects/3/diagnosis"]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Flask]:
    settings = make_settings(
        tmp_path,
        server={
            "admin_tokens": "{ops: admin-secret}",
            "metrics_token": "scrape-secret",
            "basic_auth_user": "ls",
            "basic_auth_password": "ls-secret",
        },
    )
    app = create_app(settings)
    with app.extensions["labelloop"].store.session() as session:
        repo.ensure_project(session, 3)
    yield app
    shutdown(app)


@pytest.mark.parametrize(
    "headers", [{}, basic("ls", "ls-secret"), METRICS, {"Authorization": "Bearer x"}]
)
def test_admin_routes_need_an_admin_token(guarded: Flask, headers: dict[str, str]) -> None:
    """Anyone could queue cycles, read the diagnosis, dashboard and metrics."""
    client = guarded.test_client()
    for method, path in NEEDS_ADMIN:
        response = getattr(client, method)(path, json={}, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.get_json()["error"] == "unauthorized"
    with guarded.extensions["labelloop"].store.session() as session:
        assert repo.project_counts(session, 3).pending_events == 0
    assert client.post("/api/projects/3/cycles", headers=ADMIN).status_code == 202


def test_dashboard_takes_the_admin_token_as_bearer_or_browser_login(guarded: Flask) -> None:
    client = guarded.test_client()
    for path in DASHBOARD:
        anonymous = client.get(path)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")  # the browser asks
        assert client.get(path, headers=basic("ops", "wrong")).status_code == 401
        assert client.get(path, headers=basic("other", "admin-secret")).status_code == 401
        assert client.get(path, headers=basic("ls", "ls-secret")).status_code == 401
        for headers in (ADMIN, basic("ops", "admin-secret")):
            assert client.get(path, headers=headers).status_code in (200, 404), path


def test_metrics_take_the_read_only_token_or_an_admin_token(guarded: Flask) -> None:
    client = guarded.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=basic("ls", "ls-secret")).status_code == 401
    assert client.get("/metrics", headers=METRICS).status_code == 200
    assert client.get("/metrics", headers=ADMIN).status_code == 200
    assert client.get("/api/projects/3/cycles", headers=METRICS).status_code == 401


def test_label_studio_routes_take_basic_auth_and_openapi_is_public(guarded: Flask) -> None:
    client = guarded.test_client()
    for method, path in (
        ("get", "/health"),
        ("post", "/setup"),
        ("post", "/predict"),
        ("post", "/webhook"),
    ):
        assert getattr(client, method)(path, json={}, headers=ADMIN).status_code == 401
    assert client.get("/health", headers=basic("ls", "ls-secret")).status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_without_tokens_the_credentialed_routes_are_off(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, server={"admin_tokens": "{}"}))
    try:
        client = app.test_client()
        for path in ["/api/projects/3/cycles", "/metrics", *DASHBOARD]:
            response = client.get(path, headers=ADMIN)
            assert response.status_code == 403, path
            assert "server." in response.get_json()["detail"]
        assert client.get("/health").status_code == 200  # no basic auth configured: open
    finally:
        shutdown(app)


def test_a_route_without_a_declared_operation_needs_an_admin_token(guarded: Flask) -> None:
    guarded.add_url_rule("/undeclared", "undeclared", lambda: jsonify({"ok": True}))
    client = guarded.test_client()
    assert client.get("/undeclared").status_code == 401
    assert client.get("/undeclared", headers=ADMIN).get_json() == {"ok": True}


def test_openapi_documents_every_route_with_its_schemas(guarded: Flask) -> None:
    doc = guarded.test_client().get("/openapi.json").get_json()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    for rule in guarded.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<id:", "{").replace("<", "{").replace(">", "}")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (method, path) in documented, (method, rule.rule)
    webhook = doc["paths"]["/webhook"]["post"]
    assert webhook["security"] == [{"labelStudioBasic": []}]
    schema = webhook["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/WebhookEvent"}
    project = doc["paths"]["/api/projects/{project_id}/cycles"]["get"]["parameters"][0]
    assert project["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    assert {"WebhookEvent", "SetupRequest", "PredictRequest", "Error"} <= set(
        doc["components"]["schemas"]
    )
