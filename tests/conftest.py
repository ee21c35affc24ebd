"""Shared fixtures: settings built from a dict, a fresh store and app per test."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sklearn  # noqa: F401  (imported first: it sets KMP_* variables once, at import)
from flask import Flask
from flask.testing import FlaskClient

from backend.app import create_app, shutdown
from backend.settings import Settings, load_settings
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


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """A test that leaves threads running or changes the environment fails."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    threads = {t.ident for t in threading.enumerate()}
    yield
    after = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    assert after == env, "test leaked environment changes"
    leaked = [
        t.name
        for t in threading.enumerate()
        if t.ident not in threads and t.is_alive() and not t.name.startswith(("pytest_timeout",))
    ]
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


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    environ = {"LABELLOOP_STORE__DATA_DIR": str(tmp_path / "data")}
    if "url" in _POSTGRES:
        from tests.postgres import fresh_database

        environ["LABELLOOP_STORE__DATABASE_URL"] = fresh_database(_POSTGRES["url"])
    for section, values in sections.items():
        for key, value in values.items():
            environ[f"LABELLOOP_{section.upper()}__{key.upper()}"] = str(value)
    return load_settings(environ=environ)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store(settings.store.url)
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture
def app(settings: Settings, store: Store) -> Iterator[Flask]:
    app = create_app(settings, store=store)
    app.testing = True
    yield app
    shutdown(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
