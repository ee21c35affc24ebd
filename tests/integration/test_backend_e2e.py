"""The backend against a REAL Label Studio 1.23.2: connect, webhooks, predictions, reconcile.

A user's path end to end: create a project with images, `labelloop connect`, annotate in Label
Studio (create, update, delete) and see the store follow through webhooks; run "Retrieve
predictions"; stop the backend, keep annotating, restart it and let reconcile recover every change.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from backend.cli import main as cli_main
from backend.demo import ServedBackend, serve_in_thread
from backend.labelstudio.client import LabelStudio
from backend.lsprocess import free_port
from backend.settings import Settings, load_settings
from backend.store import repo
from backend.store.db import Store
from backend.store.models import Annotation, InboxEvent
from tests.conftest import SINGLE_CONFIG

pytestmark = pytest.mark.integration
LABELS = ["cat", "dog", "bird"]


def _png(i: int) -> bytes:
    image = Image.new("RGB", (32, 32), ((i * 40) % 256, (i * 90) % 256, (i * 10) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _result(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


def _wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


class Env:
    def __init__(self, label_studio: Any, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.config = root / "labelloop.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "label_studio": {"url": label_studio.url, "token": label_studio.token},
                    "server": {
                        "port": self.port,
                        "public_url": f"http://127.0.0.1:{self.port}",
                        "log_level": "WARNING",
                    },
                    "store": {"data_dir": str(root / "data")},
                }
            )
        )
        self.settings: Settings = load_settings(self.config, environ={})
        self.ls = LabelStudio(self.settings.label_studio)
        self.store = Store(self.settings.store.url)
        self.backend: ServedBackend | None = None

    def start(self) -> None:
        self.backend = serve_in_thread(self.settings)

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.stop()
            self.backend = None

    def cli(self, *args: str) -> int:
        return cli_main(["--config", str(self.config), *args])

    def store_labels(self, project: int) -> dict[int, list[str]]:
        with self.store.session() as session:
            return {a.id: a.labels for a in repo.live_annotations(session, project)}


@pytest.fixture(scope="module")
def env(label_studio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    env = Env(label_studio, tmp_path_factory.mktemp("backend"))
    env.start()
    yield env
    env.stop()
    env.store.dispose()
    env.ls.close()


@pytest.fixture(scope="module")
def project(env: Env) -> int:
    project_id = env.ls.create_project("e2e pets", SINGLE_CONFIG)
    env.ls.upload_images(project_id, [(f"pet{i}.png", _png(i)) for i in range(8)])
    return project_id


def test_connect_registers_backend_and_syncs(env: Env, project: int) -> None:
    assert env.cli("connect", "--project", str(project)) == 0
    backends = env.ls.list_ml_backends(project)
    assert [b["url"] for b in backends] == [env.settings.server.public_url]
    dashboard = f"{env.settings.server.public_url}/dashboard/{project}"
    assert dashboard in backends[0]["description"]
    assert env.ls.get_project(project)["description"].count(dashboard) == 1
    # Connecting twice updates the same backend instead of adding a second one.
    assert env.cli("connect", "--project", str(project)) == 0
    assert len(env.ls.list_ml_backends(project)) == 1
    assert env.ls.get_project(project)["description"].count(dashboard) == 1
    with env.store.session() as session:
        stored = repo.ensure_project(session, project)
        assert stored.labels == LABELS
        tasks = repo.live_tasks(session, project)
        assert len(tasks) == 8
        assert all(t.image_ref and t.image_ref.startswith("/data/upload/") for t in tasks)


def test_annotations_follow_through_webhooks(env: Env, project: int) -> None:
    tasks = [t["id"] for t in env.ls.iter_tasks(project)]
    first = env.ls.create_annotation(tasks[0], _result("cat"))
    second = env.ls.create_annotation(tasks[1], _result("dog"))
    _wait_for(lambda: env.store_labels(project) == {first["id"]: ["cat"], second["id"]: ["dog"]})
    env.ls.update_annotation(first["id"], _result("bird"))
    _wait_for(lambda: env.store_labels(project).get(first["id"]) == ["bird"])
    env.ls.delete_annotation(second["id"])
    _wait_for(lambda: second["id"] not in env.store_labels(project))
    with env.store.session() as session:
        actions = {e.action for e in session.query(InboxEvent).all()}
        assert {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"} <= actions
        deleted = session.get(Annotation, second["id"])
        assert deleted is not None and deleted.deleted


def test_retrieve_predictions_before_a_model_stores_nothing(env: Env, project: int) -> None:
    task_ids = [t["id"] for t in env.ls.iter_tasks(project)]
    env.ls.retrieve_predictions(project, task_ids)
    for task_id in task_ids[:3]:
        assert env.ls.get_task(task_id).get("predictions") in ([], None)


def test_reconcile_recovers_changes_made_while_down(env: Env, project: int) -> None:
    before = env.store_labels(project)
    env.stop()
    tasks = [t["id"] for t in env.ls.iter_tasks(project)]
    created = env.ls.create_annotation(tasks[2], _result("dog"))
    updated_id = next(iter(before))
    env.ls.update_annotation(updated_id, _result("cat"))
    removed = env.ls.create_annotation(tasks[3], _result("bird"))
    env.ls.delete_annotation(removed["id"])
    env.start()
    assert env.cli("sync", "--project", str(project)) == 0
    expected = {**before, created["id"]: ["dog"], updated_id: ["cat"]}
    assert env.store_labels(project) == expected
    # A second sync finds nothing to change.
    assert env.cli("sync", "--project", str(project)) == 0
    assert env.store_labels(project) == expected
