"""Shared fixtures: settings built from a dict, a fresh store and app per test."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sklearn  # noqa: F401  (imported first: it sets KMP_* variables once, at import)
from flask import Flask
from flask.testing import FlaskClient

from backend.api.app import create_app, shutdown
from backend.loop.inbox import parse_event
from backend.settings import Settings, load_settings
from backend.store import repo
from backend.store.db import Store

SINGLE_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image" choice="single" showInline="true">
    <Choice value="cat"/>
    <Choice value="dog"/>
    <Choice value="bird"/>
  </Choices>
</View>
"""

MULTI_CONFIG = """
<View>
  <Image name="img" value="$photo"/>
  <Choices name="tags" toName="img" choice="multiple">
    <Choice value="indoor"/>
    <Choice value="person"/>
  </Choices>
</View>
"""


#: Set by pytest, or by torch the first time any test imports it (not a test's doing).
_ENV_SET_BY_LIBRARIES = frozenset(
    {"PYTEST_CURRENT_TEST", "PYTORCH_NVML_BASED_CUDA_CHECK", "TORCHINDUCTOR_CACHE_DIR"}
)


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """A test that leaves threads running or changes the environment fails."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_SET_BY_LIBRARIES}
    threads = {t.ident for t in threading.enumerate()}
    yield
    after = {k: v for k, v in os.environ.items() if k not in _ENV_SET_BY_LIBRARIES}
    assert after == env, "test leaked environment changes"
    new = [
        t
        for t in threading.enumerate()
        if t.ident not in threads and t.is_alive() and not t.name.startswith(("pytest_timeout",))
    ]
    # A module's server may still be answering a request Label Studio sent (a webhook): such a
    # thread ends by itself within moments; a leaked one does not.
    deadline = time.monotonic() + 5.0
    for thread in new:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in new if t.is_alive()]
    assert not leaked, f"test leaked threads: {leaked}"


#: The session's PostgreSQL server (``pytest --database postgresql``), else None (SQLite).
_POSTGRES: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="state store of every test: a SQLite file each (default) or a database each on a "
        "throwaway PostgreSQL server started for the session",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--database") == "postgresql":
        from tests.postgres import postgres_server

        server = postgres_server()
        _POSTGRES.update(url=server.__enter__(), server=server)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = _POSTGRES.pop("server", None)
    if server is not None:
        server.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def _drop_test_databases() -> Iterator[None]:
    """On PostgreSQL, drop the databases this test made (wider fixtures' stay until the end)."""
    made: list[str] = _POSTGRES.setdefault("made", [])
    before = len(made)
    yield
    if "url" in _POSTGRES:
        from tests.postgres import drop_database

        for url in made[before:]:
            drop_database(_POSTGRES["url"], url)
        del made[before:]


#: A small CNN trained from scratch: a real model, fast enough for API and cycle tests.
SMALL_MODEL: dict[str, Any] = {
    "backbone": "small_cnn",
    "image_size": 32,
    "committee_size": 2,
    "cv_folds": 3,
    "max_epochs": 60,
}


#: The admin token every test's settings carry (``server.admin_tokens: {tests: ...}``); the
#: ``client`` fixture sends it, so routes that need a credential answer.
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def deliver(store: Store, *events: dict[str, Any]) -> None:
    """Store webhook bodies in the inbox as the webhook endpoint does (applied later)."""
    with store.session() as session:
        for event in events:
            parsed = parse_event(event)
            repo.record_delivery(
                session,
                key=repo.delivery_key(json.dumps(event, sort_keys=True).encode()),
                action=parsed.action,
                project_id=parsed.project_id,
                payload=parsed.payload,
            )


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    environ = {
        "LABELLOOP_STORE__DATA_DIR": str(tmp_path / "data"),
        "LABELLOOP_SERVER__ADMIN_TOKENS": f"{{tests: {ADMIN_TOKEN}}}",
    }
    if "url" in _POSTGRES:
        from tests.postgres import fresh_database

        url = fresh_database(_POSTGRES["url"])
        _POSTGRES.setdefault("made", []).append(url)
        environ["LABELLOOP_STORE__DATABASE_URL"] = url
    for section, values in sections.items():
        for key, value in values.items():
            environ[f"LABELLOOP_{section.upper()}__{key.upper()}"] = str(value)
    return load_settings(environ=environ)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A throwaway Redis server for the session (``loop.executor: rq``)."""
    from tests.redis_server import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def upgraded_store(settings: Settings) -> Iterator[Store]:
    """A store on ``settings``' database, migrated; disposed when the generator closes."""
    store = Store(settings.store.url)
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    yield from upgraded_store(settings)


@pytest.fixture
def app(settings: Settings, store: Store) -> Iterator[Flask]:
    app = create_app(settings, store=store)
    app.testing = True
    yield app
    shutdown(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client that sends the tests' admin token with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = ADMIN["Authorization"]
    return client
