"""``model.fine_tune``: train tunes the backbone, saves its weights; /predict embeds with them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from backend.api.app import create_app, shutdown
from backend.labelstudio.images import ImageResolver
from backend.loop import ingest
from backend.loop.embed import project_backbone
from backend.loop.fit import train_project
from backend.loop.targets import Targets
from backend.model.backbones import build_backbone, weights_path
from backend.settings import Settings
from backend.store import repo
from backend.store.db import Store
from backend.store.models import ModelVersion
from tests.api.test_predict_model import _seed_project
from tests.conftest import SINGLE_CONFIG, SMALL_MODEL, make_settings, upgraded_store
from tests.diagnosis_project import COLORS
from tests.diagnosis_project import data_url as _data_url


@pytest.fixture
def tune_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        model={**SMALL_MODEL, "fine_tune": True, "fine_tune_steps": 20},
    )


@pytest.fixture
def store(tune_settings: Settings) -> Iterator[Store]:
    yield from upgraded_store(tune_settings)


def _predict(settings: Settings, store: Store, truth: dict[int, str]) -> list[dict[str, Any]]:
    app = create_app(settings, store=store)
    client: FlaskClient = app.test_client()
    tasks = [
        {"id": t, "data": {"image": _data_url(COLORS[label], 1000 + t)}}
        for t, label in truth.items()
    ]
    try:
        body = client.post("/predict", json={"tasks": tasks, "project": "9.1"}).get_json()
    finally:
        shutdown(app)
    results: list[dict[str, Any]] = body["results"]
    return results


def test_fine_tuned_backbone_is_trained_saved_and_served(
    tune_settings: Settings, store: Store
) -> None:
    truth = _seed_project(store, 9, per_class=4)
    resolver = ImageResolver(tune_settings.label_studio, tune_settings.images)
    outcome = train_project(tune_settings, store, 9, resolver.fetch)
    base = build_backbone(tune_settings.model).name
    assert outcome.model.backbone.startswith(base + "+ft")
    assert weights_path(tune_settings.store.data_dir, 9, outcome.model.backbone).is_file()
    with store.session() as session:
        assert session.query(ModelVersion).one().backbone == outcome.model.backbone
    results = _predict(tune_settings, store, truth)
    assert len(results) == len(truth)
    assert all(r["model_version"] == outcome.version for r in results)
    predicted = [r["result"][0]["value"]["choices"][0] for r in results]
    assert np.mean([p == truth[t] for p, t in zip(predicted, truth, strict=True)]) >= 0.9


def test_predict_refuses_when_the_tuned_weights_are_gone(
    tune_settings: Settings, store: Store
) -> None:
    truth = _seed_project(store, 9, per_class=4)
    resolver = ImageResolver(tune_settings.label_studio, tune_settings.images)
    outcome = train_project(tune_settings, store, 9, resolver.fetch)
    weights_path(tune_settings.store.data_dir, 9, outcome.model.backbone).unlink()
    assert _predict(tune_settings, store, truth) == []  # never vectors from other weights


def test_too_few_readable_labels_keep_the_pretrained_backbone(
    tune_settings: Settings, store: Store
) -> None:
    with store.session() as session:
        project = repo.ensure_project(session, 9)
        ingest.set_label_config(session, project, SINGLE_CONFIG)
        for task_id, ref in enumerate(["a", "b", "broken", "broken"], start=1):
            ingest.upsert_task(session, project, {"id": task_id, "data": {"image": ref}})
        tasks = repo.live_tasks(session, 9)
        cfg = ingest.project_config(project)
    assert cfg is not None
    images = {"a": _data_url(COLORS["cat"], 1), "b": _data_url(COLORS["dog"], 2)}
    resolver = ImageResolver(tune_settings.label_studio, tune_settings.images)

    def fetch(ref: str) -> bytes:
        return resolver.fetch(images.get(ref, "data:image/png;base64,bm90IGFuIGltYWdl"))

    # Four labels, but two images cannot be read: too few to fine-tune on.
    targets = Targets(np.array([1, 2, 3, 4]), np.array([0, 1, 0, 1]))
    backbone = project_backbone(tune_settings, 9, cfg, tasks, targets, fetch)
    assert backbone.name == build_backbone(tune_settings.model).name
    assert not (tune_settings.store.data_dir / "models" / "p9" / "backbones").exists()


def _with_model(settings: Settings, **values: Any) -> Settings:
    return settings.model_copy(update={"model": settings.model.model_copy(update=values)})


def test_pruned_versions_take_their_tuned_weights_along(
    tune_settings: Settings, store: Store
) -> None:
    _seed_project(store, 9, per_class=3)
    resolver = ImageResolver(tune_settings.label_studio, tune_settings.images)
    first = train_project(_with_model(tune_settings, keep_versions=1), store, 9, resolver.fetch)
    first_weights = weights_path(tune_settings.store.data_dir, 9, first.model.backbone)
    assert first_weights.is_file()
    # Another seed: another base network, so the new version no longer uses the first weights.
    second_settings = _with_model(tune_settings, keep_versions=1, seed=1)
    second = train_project(second_settings, store, 9, resolver.fetch)
    assert not first.path.exists() and not first_weights.exists()
    assert weights_path(tune_settings.store.data_dir, 9, second.model.backbone).is_file()
