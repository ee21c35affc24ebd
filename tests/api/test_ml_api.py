"""The ML backend endpoints: bodies, statuses and stored effects."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError

from backend.api.app import EXTENSION, create_app, shutdown
from backend.loop.inbox import apply_pending
from backend.runtime.process import run_scheduler_process
from backend.settings import Settings, with_overrides
from backend.store import repo
from backend.store.db import Store
from backend.store.models import InboxEvent, Project
from tests.conftest import MULTI_CONFIG, SINGLE_CONFIG, make_settings
from tests.unit.test_scheduler import FakeCycle, state_of, wait_for


def _event(action: str, **body: Any) -> dict[str, Any]:
    return {"action": action, "project": {"id": 3, "label_config": SINGLE_CONFIG}, **body}


def _annotation(ann_id: int = 1, label: str = "cat") -> dict[str, Any]:
    return {
        "id": ann_id,
        "task": 5,
        "completed_by": 1,
        "result": [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
        "created_at": "2026-01-01T10:00:00Z",
        "updated_at": "2026-01-01T10:00:00Z",
    }


def set_up(store: Store, project_id: int = 3) -> None:
    """A project row, as ``labelloop connect`` (a sync) or Label Studio's /setup leaves it."""
    with store.session() as session:
        repo.ensure_project(session, project_id)


def test_health_lists_projects_and_versions(client: FlaskClient, store: Store) -> None:
    assert client.get("/health").get_json() == {
        "status": "UP",
        "model_class": "labelloop",
        "projects": {},
    }
    with store.session() as session:
        repo.ensure_project(session, 4).model_version = "labelloop-4-v2"
        repo.ensure_project(session, 5)
    body = client.get("/health").get_json()
    assert body["projects"] == {"4": "labelloop-4-v2", "5": "untrained"}


def test_setup_stores_the_parsed_config(client: FlaskClient, store: Store) -> None:
    response = client.post(
        "/setup",
        json={
            "project": "12.1767225600",
            "schema": MULTI_CONFIG,
            "hostname": "http://ls:8080",
            "access_token": "legacy-token-never-stored",
        },
    )
    assert response.status_code == 200
    assert response.get_json() == {"model_version": "untrained"}
    with store.session() as session:
        project = session.get(Project, 12)
        assert project is not None
        assert project.labels == ["indoor", "person"]
        assert project.multiple is True
        assert (project.from_name, project.to_name, project.value_key) == ("tags", "img", "photo")
        assert project.ls_hostname == "http://ls:8080"
        assert "legacy-token-never-stored" not in json.dumps(project.settings)


def test_setup_refuses_unsupported_configs_naming_them(client: FlaskClient) -> None:
    config = (
        '<View><Image name="i" value="$image"/><RectangleLabels name="b" toName="i">'
        '<Label value="car"/></RectangleLabels></View>'
    )
    response = client.post("/setup", json={"project": "1.1", "schema": config})
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "unsupported_label_config"
    assert "RectangleLabels" in body["detail"]


def test_predict_without_a_model_returns_no_results(client: FlaskClient, store: Store) -> None:
    set_up(store)
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}, {"id": 2, "data": {}}]
    response = client.post(
        "/predict", json={"tasks": tasks, "project": "3.17", "label_config": SINGLE_CONFIG}
    )
    assert response.status_code == 200
    assert response.get_json() == {"results": []}
    with store.session() as session:  # the config sent along was remembered
        assert session.get(Project, 3).labels == ["cat", "dog", "bird"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"project": "3.1"}, "tasks"),
        (
            {"tasks": [{"data": {}}], "project": "3.1", "label_config": SINGLE_CONFIG},
            "'tasks.0.id'",
        ),
        ({"tasks": [{"id": 1}], "project": "abc"}, "'<id>.<timestamp>'"),
        ({"tasks": "nope", "project": "3.1"}, "tasks"),
    ],
)
def test_predict_rejects_bad_bodies(client: FlaskClient, body: Any, detail: str) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_request"
    assert detail in response.get_json()["detail"]


@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook"])
def test_malformed_json_is_a_400_json_error(client: FlaskClient, path: str) -> None:
    response = client.post(path, data=b"{not json", content_type="application/json")
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "bad_request"
    assert "not valid JSON" in body["detail"]
    empty = client.post(path, data=b"")
    assert empty.status_code == 400 and "empty" in empty.get_json()["detail"]


def test_webhook_stores_without_applying(client: FlaskClient, store: Store) -> None:
    set_up(store)
    response = client.post("/webhook", json=_event("ANNOTATION_CREATED", annotation=_annotation()))
    assert response.status_code == 200
    assert response.get_json() == {"status": "stored", "action": "ANNOTATION_CREATED"}
    with store.session() as session:
        events = session.query(InboxEvent).all()
        assert [(e.action, e.project_id, e.applied_at) for e in events] == [
            ("ANNOTATION_CREATED", 3, None)
        ]
        assert repo.live_annotations(session, 3) == []  # nothing applied inside the request
    apply_pending(store)
    with store.session() as session:
        assert [a.labels for a in repo.live_annotations(session, 3)] == [["cat"]]


def test_webhook_duplicate_delivery_is_acknowledged_once(client: FlaskClient, store: Store) -> None:
    set_up(store)
    body = json.dumps(_event("ANNOTATION_UPDATED", annotation=_annotation(label="dog")))
    first = client.post("/webhook", data=body, content_type="application/json")
    second = client.post("/webhook", data=body, content_type="application/json")
    assert first.get_json()["status"] == "stored"
    assert second.get_json()["status"] == "duplicate"
    with store.session() as session:
        assert session.query(InboxEvent).count() == 1


def test_webhook_unknown_action_is_acknowledged_and_ignored(
    client: FlaskClient, store: Store
) -> None:
    response = client.post("/webhook", json=_event("LABEL_LINK_CREATED"))
    assert response.status_code == 200
    assert response.get_json() == {"status": "ignored", "action": "LABEL_LINK_CREATED"}
    with store.session() as session:
        assert session.query(InboxEvent).count() == 0


def test_webhook_rejects_events_it_cannot_read(client: FlaskClient) -> None:
    response = client.post("/webhook", json={"action": "ANNOTATION_CREATED"})
    assert response.status_code == 400
    assert "project.id" in response.get_json()["detail"]


def test_metrics_count_requests_and_events(client: FlaskClient, store: Store) -> None:
    set_up(store)
    client.get("/health")
    client.post("/webhook", json=_event("TASKS_CREATED", tasks=[{"id": 5, "data": {}}]))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'labelloop_http_requests_total{endpoint="/health",method="GET",status="200"} 1.0' in text
    assert 'labelloop_webhook_events_received_total{action="TASKS_CREATED",project="3"} 1.0' in text
    assert "labelloop_http_request_duration_seconds_bucket" in text


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    wrong = client.get("/webhook")
    assert wrong.status_code == 405 and wrong.get_json()["error"] == "method_not_allowed"


def test_unexpected_errors_are_json_without_traceback(
    client: FlaskClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("secret internals")

    set_up(store)
    monkeypatch.setattr(repo, "record_deliveries", boom)
    response = client.post("/webhook", json=_event("TASKS_CREATED", tasks=[]))
    assert response.status_code == 500
    body = response.get_json()
    assert body == {"error": "internal_error", "detail": "RuntimeError; see the server log"}
    assert "Traceback" not in response.get_data(as_text=True)


def test_a_busy_database_is_a_503_to_send_again_and_the_resend_is_stored(
    client: FlaskClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = repo.record_deliveries, 0

    def locked_once(*args: Any, **kwargs: Any) -> list[bool | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("INSERT INTO inbox_events", {}, Exception("database is locked"))
        return real(*args, **kwargs)

    set_up(store)
    monkeypatch.setattr(repo, "record_deliveries", locked_once)
    body = json.dumps(_event("ANNOTATION_CREATED", annotation=_annotation()))
    busy = client.post("/webhook", data=body, content_type="application/json")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.get_json()["error"] == "unavailable"
    with store.session() as session:
        assert session.query(InboxEvent).count() == 0
    again = client.post("/webhook", data=body, content_type="application/json")
    assert again.get_json()["status"] == "stored"
    with store.session() as session:
        assert session.query(InboxEvent).count() == 1


@pytest.fixture
def auth_app(tmp_path: Path) -> Any:
    settings = make_settings(
        tmp_path,
        server={"basic_auth_user": "ls", "basic_auth_password": "pw", "max_body_bytes": 2048},
    )
    app = create_app(settings)
    yield app
    shutdown(app)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("path", ["/health"])
def test_basic_auth_required_when_configured(auth_app: Flask, path: str) -> None:
    client = auth_app.test_client()
    missing = client.get(path)
    assert missing.status_code == 401
    assert missing.get_json()["error"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get(path, headers=_basic("ls", "wrong")).status_code == 401
    assert client.get(path, headers=_basic("ls", "pw")).status_code == 200


def test_body_size_limit_is_a_413_json_error(auth_app: Flask) -> None:
    client = auth_app.test_client()
    big = json.dumps(_event("TASKS_CREATED", tasks=[{"id": i, "data": {}} for i in range(200)]))
    response = client.post(
        "/webhook", data=big, content_type="application/json", headers=_basic("ls", "pw")
    )
    assert response.status_code == 413
    assert response.get_json()["error"] == "request_entity_too_large"


def test_with_a_separate_scheduler_the_api_stores_webhooks_and_the_scheduler_counts_them(
    settings: Settings, store: Store
) -> None:
    """Scale-out: the API process only stores events; the scheduler process applies them, so the
    annotation changes reach its retrain trigger instead of being applied where nobody counts."""
    loop = {
        "run_scheduler": False,
        "retrain_after": 2,
        "debounce_s": 0,
        "max_delay_s": 0,
        "poll_s": 0.1,
        "schedule_interval_minutes": None,
    }
    split = with_overrides(settings, {"loop": loop})
    set_up(store)
    api = create_app(split, store=store, start_worker=True, runner=FakeCycle())
    try:
        assert api.extensions[EXTENSION].worker is None  # no inbox worker, no scheduler
        assert api.extensions[EXTENSION].loop is None
        client = api.test_client()
        for ann_id in (1, 2):
            event = _event("ANNOTATION_CREATED", annotation=_annotation(ann_id))
            assert client.post("/webhook", json=event).status_code == 200
        with store.session() as session:
            assert len(repo.pending_events(session)) == 2
        runner, stop = FakeCycle(), threading.Event()
        scheduler = threading.Thread(
            target=run_scheduler_process,
            args=(split, lambda _s, _st: runner),
            kwargs={"stop": stop},
        )
        scheduler.start()
        try:
            wait_for(lambda: bool(runner.calls) and state_of(store, 3) == "idle")
        finally:
            stop.set()
            scheduler.join()
        assert runner.calls == [(3, "debounce")]
    finally:
        shutdown(api)
