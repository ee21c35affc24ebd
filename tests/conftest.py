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


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    environ = {"LABELLOOP_STORE__DATA_DIR": str(tmp_path / "data")}
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
