"""Fuzzing every operation of ``/openapi.json``: no input gives a 5xx, every error is JSON.

Hypothesis draws path ids from the whole integer line (and text), query values as text, and
bodies that are arbitrary JSON or objects with the schema's own keys holding arbitrary JSON, so
both the parser and the schema checks are exercised. Examples are bounded per operation; the
server must still answer ``/health`` afterwards. Runs on PostgreSQL too (``--database``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.api.app import create_app, shutdown
from backend.loop import ingest
from backend.store import repo
from tests.conftest import ADMIN, SINGLE_CONFIG, make_settings

EXAMPLES = 25
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Surrogates are left out: no client can send them in a URL (UTF-8 has no encoding for them).
IDS = st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#%"),
    min_size=1,
    max_size=12,
)


def _schema_keys(doc: dict[str, Any], op: dict[str, Any]) -> list[str]:
    ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if not ref:
        return []
    schema = doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    return list(schema.get("properties", {}))


def _bodies(keys: list[str]) -> st.SearchStrategy[Any]:
    if not keys:
        return JSON
    shaped = st.fixed_dictionaries({}, optional={k: JSON for k in keys})
    actions = st.sampled_from(["ANNOTATION_CREATED", "TASKS_CREATED", "START_TRAINING"])
    webhook = st.fixed_dictionaries(
        {"action": actions, "project": st.sampled_from([3, {"id": 3}])},
        optional={k: JSON for k in keys if k not in ("action", "project")},
    )
    return JSON | shaped | (webhook if "action" in keys else shaped)


def _operations(client: FlaskClient) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    doc = client.get("/openapi.json").get_json()
    return [
        (method, path, op, doc) for path, ops in doc["paths"].items() for method, op in ops.items()
    ]


@pytest.fixture
def fuzz_client(tmp_path: Path) -> Any:
    app = create_app(make_settings(tmp_path))
    with app.extensions["labelloop"].store.session() as session:
        ingest.set_label_config(session, repo.ensure_project(session, 3), SINGLE_CONFIG)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = ADMIN["Authorization"]
    yield client
    shutdown(app)


def _fuzz(client: FlaskClient, method: str, path: str, op: dict[str, Any], doc: Any) -> None:
    names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
    queries = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        ids=st.fixed_dictionaries({name: IDS | st.just("3") for name in names}),
        query=st.dictionaries(st.sampled_from([*queries, "x"]), st.text(max_size=8), max_size=2),
        body=_bodies(_schema_keys(doc, op)),
    )
    def call(ids: dict[str, str], query: dict[str, str], body: Any) -> None:
        url = path.format(**ids)
        data = json.dumps(body) if "requestBody" in op else None
        response = client.open(
            url,
            method=method.upper(),
            data=data,
            query_string=query,
            content_type="application/json",
        )
        assert response.status_code < 500, (method, url, data, response.get_data()[:300])
        if response.status_code >= 400:
            assert set(response.get_json()) >= {"error", "detail"}
        response.close()

    call()


def test_every_operation_answers_fuzzed_input_without_a_server_error(
    fuzz_client: FlaskClient,
) -> None:
    operations = _operations(fuzz_client)
    assert len(operations) >= 12
    for method, path, op, doc in operations:
        _fuzz(fuzz_client, method, path, op, doc)
    assert fuzz_client.get("/health").get_json()["status"] == "UP"
