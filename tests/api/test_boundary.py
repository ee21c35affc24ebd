"""The request boundary: every bad input is a 4xx JSON error, never a 500 (the reproducers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from backend.api.requests import json_depth
from backend.loop import ingest
from backend.store import repo
from backend.store.db import Store
from backend.store.models import Annotation, InboxEvent, Project, Task
from tests.conftest import SINGLE_CONFIG

TOO_BIG = 2**63
DEEP = b"[" * 3000 + b"]" * 3000


def _set_up(store: Store, *project_ids: int) -> None:
    with store.session() as session:
        for pid in project_ids:
            project = repo.ensure_project(session, pid)
            ingest.set_label_config(session, project, SINGLE_CONFIG)


def _is_json_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert set(body) >= {"error", "detail"}
    return body  # type: ignore[no-any-return]


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[{{"}]}') == 3
    assert json_depth(b'["\\"]]]", [[]]]') == 3
    assert json_depth(b'"unterminated [[[') == 0
    assert json_depth(DEEP) == 3000


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/setup"),
        ("post", "/predict"),
        ("post", "/webhook"),
        ("patch", "/api/projects/3/settings"),
        ("post", "/api/projects/3/preview"),
    ],
)
def test_deeply_nested_json_is_a_400(client: FlaskClient, method: str, path: str) -> None:
    """Nested 3,000 deep was a RecursionError (500); admin and ML parsed bodies two ways."""
    for raw in (DEEP, b'{"action": "TASKS_CREATED", "x": ' + DEEP + b"}"):
        response = getattr(client, method)(path, data=raw, content_type="application/json")
        assert "levels deep; at most 64" in _is_json_error(response, 400)["detail"]


@pytest.mark.parametrize("raw", [b"[NaN]", b'{"a": Infinity}', b"[1e999]", b"1" + b"0" * 5000])
def test_numbers_json_cannot_store_are_a_400(client: FlaskClient, raw: bytes) -> None:
    response = client.post("/webhook", data=raw, content_type="application/json")
    assert "not valid JSON" in _is_json_error(response, 400)["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/projects/{}/cycles",
        "/api/projects/{}/settings",
        "/api/projects/{}/settings/history",
        "/api/projects/{}/diagnosis",
        "/dashboard/{}",
        "/dashboard/1/thumb/{}.png",
    ],
)
def test_ids_out_of_range_in_routes_are_404(client: FlaskClient, path: str) -> None:
    """Ids >= 2^63 were an OverflowError from SQLite in every <int:> route."""
    for value in (TOO_BIG, 10**30, 0, -5, "²", "1.5"):
        body = _is_json_error(client.get(path.format(value)), 404)
        assert body["error"] == "not_found", body


def test_the_largest_id_is_accepted(client: FlaskClient) -> None:
    body = client.get(f"/api/projects/{TOO_BIG - 1}/cycles").get_json()
    assert body["project"] == TOO_BIG - 1 and body["state"]["state"] == "idle"


def test_bad_limits_are_a_400(client: FlaskClient) -> None:
    """'²'.isdigit() is True and int('²') raised: a 500."""
    for limit in ("²", "0", "501", "-1", "1e3", str(TOO_BIG), ""):
        for path in ("/api/projects/3/cycles", "/api/projects/3/settings/history"):
            body = _is_json_error(client.get(path, query_string={"limit": limit}), 400)
            assert "limit" in body["detail"], body


def test_unknown_query_parameters_are_a_400(client: FlaskClient) -> None:
    response = client.get("/api/projects/3/cycles", query_string={"limt": "5"})
    assert "limt" in _is_json_error(response, 400)["detail"]


def test_bad_project_ids_in_setup_and_predict_are_a_400(client: FlaskClient) -> None:
    for project in (f"{TOO_BIG}.17", "².17", "-5.1", "0.1", "1.2.3", "", True, TOO_BIG, 0, -1, 1.5):
        setup = client.post("/setup", json={"project": project, "schema": SINGLE_CONFIG})
        assert "project" in _is_json_error(setup, 400)["detail"]
        predict = client.post("/predict", json={"project": project, "tasks": [{"id": 1}]})
        assert "project" in _is_json_error(predict, 400)["detail"]


BAD_EVENTS = [
    {"action": "ANNOTATION_CREATED", "project": {"id": TOO_BIG}},
    {"action": "ANNOTATION_CREATED", "project": TOO_BIG},
    {"action": "ANNOTATION_CREATED", "project": -5},
    {"action": "START_TRAINING", "project": {"id": 0}},
    {"action": "ANNOTATION_CREATED", "project": True},  # was stored as project 1
    {"action": "ANNOTATION_CREATED", "project": {"id": True}},
    {"action": "ANNOTATION_CREATED", "project": 3, "annotation": {"id": TOO_BIG, "task": 1}},
    {"action": "ANNOTATION_CREATED", "project": 3, "annotation": {"id": 1, "task": TOO_BIG}},
    {"action": "ANNOTATION_CREATED", "project": 3, "annotation": {"id": 1, "result": "x"}},
    {"action": "ANNOTATION_UPDATED", "project": 3, "task": {"id": -1}},
    {"action": "TASKS_CREATED", "project": 3, "tasks": [{"id": 1}, {"id": TOO_BIG}]},
    {"action": "TASKS_CREATED", "project": 3, "tasks": [{"data": {}}]},
    {"action": "ANNOTATIONS_DELETED", "project": 3, "annotations": [{"id": "7"}]},
    {"action": "", "project": 3},
    {"action": 5, "project": 3},
]


def test_bad_ids_in_webhooks_are_a_400_and_store_nothing(client: FlaskClient, store: Store) -> None:
    _set_up(store, 1, 3)
    for event in BAD_EVENTS:
        _is_json_error(client.post("/webhook", json=event), 400)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(InboxEvent)) == 0


def test_bad_task_ids_in_predict_are_a_400(client: FlaskClient) -> None:
    for task_id in (TOO_BIG, 0, "7", True, None):
        response = client.post("/predict", json={"project": "3.1", "tasks": [{"id": task_id}]})
        assert "tasks.0.id" in _is_json_error(response, 400)["detail"]


def test_events_of_projects_never_set_up_are_acknowledged_and_ignored(
    client: FlaskClient, store: Store
) -> None:
    """3,000 invented project ids made /metrics 1 MB and /health 66 KB; START_TRAINING for any
    id queued a cycle."""
    for pid in range(1000, 1300):
        for action in ("START_TRAINING", "TASKS_CREATED"):
            event = {"action": action, "project": {"id": pid}, "tasks": [{"id": pid}]}
            response = client.post("/webhook", json=event)
            assert response.status_code == 200
            assert response.get_json()["status"] == "ignored"
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Project)) == 0
        assert session.scalar(select(func.count()).select_from(InboxEvent)) == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "labelloop_webhook_events_unknown_project_total 600.0" in metrics
    assert 'project="1000"' not in metrics
    assert client.get("/health").get_json()["projects"] == {}


def test_predict_for_a_project_never_set_up_creates_no_row(
    client: FlaskClient, store: Store
) -> None:
    response = client.post(
        "/predict", json={"project": "44.1", "tasks": [{"id": 1}], "label_config": SINGLE_CONFIG}
    )
    assert response.get_json() == {"results": []}
    with store.session() as session:
        assert session.get(Project, 44) is None


def test_setup_registers_only_valid_configs_and_at_most_max_projects(
    tmp_path: Any,
) -> None:
    from backend.api.app import create_app, shutdown
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path, server={"max_projects": 2}))
    try:
        client = app.test_client()
        bad = client.post("/setup", json={"project": "5.1", "schema": "<View/>"})
        _is_json_error(bad, 422)
        for pid in (5, 6):
            assert (
                client.post("/setup", json={"project": pid, "schema": SINGLE_CONFIG}).status_code
                == 200
            )
        third = client.post("/setup", json={"project": "7.1", "schema": SINGLE_CONFIG})
        assert _is_json_error(third, 409)["error"] == "too_many_projects"
        again = client.post("/setup", json={"project": "6.2", "schema": SINGLE_CONFIG})
        assert again.status_code == 200  # a known project may set up again
        assert set(client.get("/health").get_json()["projects"]) == {"5", "6"}
    finally:
        shutdown(app)


def test_a_webhook_cannot_change_another_projects_task_or_annotation(
    client: FlaskClient, store: Store
) -> None:
    """A webhook for one project rewrote a task of another (upsert_task did not check)."""
    from backend.loop.inbox import apply_pending

    _set_up(store, 1, 2)
    own = {
        "action": "TASKS_CREATED",
        "project": {"id": 1},
        "tasks": [{"id": 10, "data": {"image": "/data/upload/1/a.png"}}],
    }
    annotation = {
        "id": 20,
        "task": 10,
        "result": [{"from_name": "label", "value": {"choices": ["cat"]}}],
    }
    created = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": annotation}
    for event in (own, created):
        assert client.post("/webhook", json=event).get_json()["status"] == "stored"
    apply_pending(store)
    hijack = {
        "action": "TASKS_CREATED",
        "project": {"id": 2},
        "tasks": [{"id": 10, "data": {"image": "/data/upload/2/evil.png"}}],
    }
    relabel = {
        "action": "ANNOTATION_UPDATED",
        "project": {"id": 2},
        "annotation": {
            **annotation,
            "result": [{"from_name": "label", "value": {"choices": ["dog"]}}],
        },
        "task": {"id": 10, "data": {"image": "/data/upload/2/evil.png"}},
    }
    delete = {"action": "ANNOTATIONS_DELETED", "project": {"id": 2}, "annotations": [{"id": 20}]}
    for event in (hijack, relabel, delete):
        assert client.post("/webhook", json=event).get_json()["status"] == "stored"
    report = apply_pending(store)
    assert report.set_aside == 0
    with store.session() as session:
        task = session.get(Task, 10)
        assert task is not None and (task.project_id, task.image_ref) == (1, "/data/upload/1/a.png")
        ann = session.get(Annotation, 20)
        assert ann is not None and (ann.project_id, ann.labels, ann.deleted) == (1, ["cat"], False)
        assert repo.live_tasks(session, 2) == []


def test_every_error_is_json(client: FlaskClient) -> None:
    for response in (
        client.post("/webhook", data=b"\xff\xfe", content_type="application/json"),
        client.post("/setup", data=json.dumps([1]), content_type="application/json"),
        client.patch("/api/projects/3/settings", json={"strategy": 5}),
        client.post("/api/projects/3/preview", json={"top": True}),
    ):
        body = _is_json_error(response, 400)
        assert body["error"] and "Traceback" not in body["detail"], body
