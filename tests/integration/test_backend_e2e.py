"""The backend against a REAL Label Studio 1.23.2: connect, webhooks, predictions, reconcile.

A user's path end to end: create a project with images, `labelloop connect`, annotate in Label
Studio (create, update, delete) and see the store follow through webhooks; run "Retrieve
predictions"; stop the backend, keep annotating, restart it and let reconcile recover every change.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from backend.cli.main import main as cli_main
from backend.store import repo
from backend.store.models import Annotation, InboxEvent
from tests.conftest import SINGLE_CONFIG
from tests.integration.support import Served, choice, wait_for

pytestmark = pytest.mark.integration
LABELS = ["cat", "dog", "bird"]


def _png(i: int) -> bytes:
    image = Image.new("RGB", (32, 32), ((i * 40) % 256, (i * 90) % 256, (i * 10) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Env(Served):
    """The backend with default settings and the CLI on its config."""

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
    first = env.ls.create_annotation(tasks[0], choice("cat", "label"))
    second = env.ls.create_annotation(tasks[1], choice("dog", "label"))
    wait_for(
        lambda: env.store_labels(project) == {first["id"]: ["cat"], second["id"]: ["dog"]},
        15,
        "the store follows the webhooks",
    )
    env.ls.update_annotation(first["id"], choice("bird", "label"))
    wait_for(
        lambda: env.store_labels(project).get(first["id"]) == ["bird"],
        15,
        "the store follows the webhooks",
    )
    env.ls.delete_annotation(second["id"])
    wait_for(
        lambda: second["id"] not in env.store_labels(project), 15, "the store follows the webhooks"
    )
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
    created = env.ls.create_annotation(tasks[2], choice("dog", "label"))
    updated_id = next(iter(before))
    env.ls.update_annotation(updated_id, choice("cat", "label"))
    removed = env.ls.create_annotation(tasks[3], choice("bird", "label"))
    env.ls.delete_annotation(removed["id"])
    env.start()
    assert env.cli("sync", "--project", str(project)) == 0
    expected = {**before, created["id"]: ["dog"], updated_id: ["cat"]}
    assert env.store_labels(project) == expected
    # A second sync finds nothing to change.
    assert env.cli("sync", "--project", str(project)) == 0
    assert env.store_labels(project) == expected
