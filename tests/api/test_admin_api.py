"""The admin API: bearer tokens, settings with history, and a preview that changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from backend.api.app import create_app, shutdown
from backend.settings import Settings
from backend.store.db import Store
from backend.store.models import Base
from backend.store.project_settings import effective_settings
from tests.conftest import make_settings, upgraded_store
from tests.fake_labelstudio import FAST_MODEL, FakeLabelStudio, run_one_cycle

TOKEN = {"Authorization": "Bearer s3cret-ops-token"}


@pytest.fixture
def admin_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        model=FAST_MODEL,
        strategy={"cold_start_labels": 0},
        server={
            "admin_tokens": "{ops: s3cret-ops-token}",
            "basic_auth_user": "ls",
            "basic_auth_password": "basic-pw",
        },
    )


@pytest.fixture
def admin_store(admin_settings: Settings) -> Iterator[Store]:
    yield from upgraded_store(admin_settings)


@pytest.fixture
def admin_client(admin_settings: Settings, admin_store: Store) -> Iterator[FlaskClient]:
    app = create_app(admin_settings, store=admin_store)
    app.testing = True
    yield app.test_client()
    shutdown(app)


def test_patch_stores_records_and_returns_the_new_settings(
    admin_client: FlaskClient, admin_settings: Settings, admin_store: Store
) -> None:
    body = {
        "strategy": {"weights": {"margin": 1, "coverage": 0}, "batch_size": 50},
        "loop": {"retrain_after": 10},
    }
    response = admin_client.patch("/api/projects/3/settings", json=body, headers=TOKEN)
    assert response.status_code == 200
    data = response.get_json()
    assert data["effective"]["strategy"]["batch_size"] == 50
    assert data["overrides"] == {
        "strategy": {"weights": {"margin": 1.0, "coverage": 0.0}, "batch_size": 50},
        "loop": {"retrain_after": 10},
    }
    assert data["defaults"]["strategy"]["batch_size"] == 100
    assert "server" not in data["effective"]  # secrets never leave through this route
    effective = effective_settings(admin_store, admin_settings, 3)
    assert effective.strategy.weights == {"margin": 1.0, "coverage": 0.0}
    assert effective.loop.retrain_after == 10
    history = admin_client.get("/api/projects/3/settings/history", headers=TOKEN).get_json()
    [entry] = history["history"]
    assert entry["token_name"] == "ops"
    assert {c["field"] for c in entry["changes"]} == {
        "strategy.weights",
        "strategy.batch_size",
        "loop.retrain_after",
    }
    assert admin_client.get("/api/projects/3/settings", headers=TOKEN).get_json() == data


def test_null_stops_a_signal_fading_and_stays_stopped(
    admin_client: FlaskClient, admin_settings: Settings, admin_store: Store
) -> None:
    assert admin_settings.strategy.fade_after == {"coverage": 100}
    body = {"strategy": {"fade_after": {"coverage": None, "coreset": 30}}}
    response = admin_client.patch("/api/projects/3/settings", json=body, headers=TOKEN)
    assert response.status_code == 200
    assert response.get_json()["effective"]["strategy"]["fade_after"] == {
        "coverage": None,
        "coreset": 30,
    }
    # Stored as an override that survives being merged onto the defaults again.
    effective = effective_settings(admin_store, admin_settings, 3)
    assert effective.strategy.fade_after == {"coverage": None, "coreset": 30}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"strategy": {"weights": {"margn": 1}}}, "strategy.weights"),
        ({"strategy": {"fade_after": {"coverag": 50}}}, "strategy.fade_after"),
        ({"strategy": {"fade_after": {"coverage": 0}}}, "strategy.fade_after"),
        ({"strategy": {"fade_after": {"confident_learning": 50}}}, "strategy.fade_after"),
        ({"loop": {"retrain_after": 0}}, "loop.retrain_after"),
        ({"label_studio": {"url": "http://evil"}}, "label_studio"),
    ],
)
def test_invalid_changes_name_the_field_and_change_nothing(
    admin_client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    response = admin_client.patch("/api/projects/3/settings", json=body, headers=TOKEN)
    assert response.status_code == 422
    data = response.get_json()
    assert data["error"] == "invalid_settings"
    assert field in data["fields"]
    assert field in data["detail"]
    history = admin_client.get("/api/projects/3/settings/history", headers=TOKEN).get_json()
    assert history["history"] == []


def test_a_body_that_is_not_an_object_is_a_400(admin_client: FlaskClient) -> None:
    response = admin_client.patch("/api/projects/3/settings", json=[1, 2], headers=TOKEN)
    assert response.status_code == 400
    assert set(response.get_json()) == {"error", "detail"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic bHM6YmFzaWMtcHc="},  # the ML endpoints' basic auth is not enough
    ],
)
def test_wrong_or_missing_token_is_401(admin_client: FlaskClient, headers: dict[str, str]) -> None:
    for method, path in (
        ("get", "/api/projects/3/settings"),
        ("patch", "/api/projects/3/settings"),
        ("get", "/api/projects/3/settings/history"),
        ("post", "/api/projects/3/preview"),
    ):
        response = getattr(admin_client, method)(path, json={}, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.get_json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_basic_auth_still_guards_the_ml_endpoints(admin_client: FlaskClient) -> None:
    assert admin_client.get("/health", headers=TOKEN).status_code == 401


def test_without_admin_tokens_the_api_is_disabled(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, server={"admin_tokens": "{}"}))
    try:
        response = app.test_client().get("/api/projects/3/settings", headers=TOKEN)
    finally:
        shutdown(app)
    assert response.status_code == 403
    assert "admin token" in response.get_json()["detail"]


def _row_counts(store: Store) -> dict[str, int]:
    with store.session() as session:
        return {
            table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }


def test_preview_changes_nothing(
    admin_client: FlaskClient, admin_settings: Settings, admin_store: Store
) -> None:
    ls = FakeLabelStudio()
    run_one_cycle(admin_settings, admin_store, ls, project=3)
    before, calls = _row_counts(admin_store), list(ls.calls)
    body = {
        "strategy": {"weights": {"margin": 0, "coverage": 1}, "fade_after": {"coverage": 6}},
        "top": 5,
    }
    response = admin_client.post("/api/projects/3/preview", json=body, headers=TOKEN)
    assert response.status_code == 200
    data = response.get_json()
    # 12 labels: today's coverage (fading after 100) keeps its weight, the proposed one is halved.
    assert data["weights"] == {
        "today": {"margin": 1.0, "coverage": 0.25},
        "proposed": {"coverage": 0.5},  # margin has weight 0: not used
    }
    assert [item["rank"] for item in data["items"]] == [1, 2, 3, 4, 5]
    for item in data["items"]:
        assert set(item) >= {"task_id", "position", "breakdown", "suggested_labels", "today_rank"}
        assert set(item["breakdown"]) == {"coverage"}
    assert 0 <= data["overlap"]["count"] <= 5
    assert data["left_out_without_embedding"] == 0
    assert _row_counts(admin_store) == before
    assert ls.calls == calls
    assert effective_settings(admin_store, admin_settings, 3) == admin_settings


def test_preview_rejects_bad_values_and_unknown_projects(admin_client: FlaskClient) -> None:
    bad = admin_client.post(
        "/api/projects/3/preview", json={"strategy": {"batch_size": 0}}, headers=TOKEN
    )
    assert bad.status_code == 422
    assert "strategy.batch_size" in bad.get_json()["fields"]
    assert (
        admin_client.post("/api/projects/3/preview", json={"top": 0}, headers=TOKEN).status_code
        == 400
    )
    unknown = admin_client.post("/api/projects/99/preview", json={}, headers=TOKEN)
    assert unknown.status_code == 409
    assert unknown.get_json()["error"] == "not_ready"
