"""/predict and `train` with a real (small) model: labels from the store, one result per task."""

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
from backend.loop.fit import train_project
from backend.loop.targets import NotEnoughLabels, consensus_targets
from backend.settings import Settings
from backend.store import repo
from backend.store.db import Store
from backend.store.models import ModelVersion
from tests.conftest import MULTI_CONFIG, SINGLE_CONFIG, SMALL_MODEL, make_settings, upgraded_store
from tests.diagnosis_project import COLORS
from tests.diagnosis_project import data_url as _data_url


def _annotation(
    ann_id: int, task: int, labels: list[str], from_name: str = "label"
) -> dict[str, Any]:
    return {
        "id": ann_id,
        "completed_by": 1,
        "result": [
            {
                "from_name": from_name,
                "to_name": "image",
                "type": "choices",
                "value": {"choices": labels},
            }
        ],
        "created_at": "2026-01-01T10:00:00Z",
        "updated_at": "2026-01-01T10:00:00Z",
    }


def _seed_project(store: Store, project_id: int, per_class: int) -> dict[int, str]:
    """Tasks with coloured images; the first ``per_class`` of each colour are labeled."""
    truth = {}
    with store.session() as session:
        project = repo.ensure_project(session, project_id)
        ingest.set_label_config(session, project, SINGLE_CONFIG)
        task_id = 1
        for label, color in COLORS.items():
            for i in range(per_class + 2):
                task = {"id": task_id, "data": {"image": _data_url(color, task_id)}}
                ingest.upsert_task(session, project, task)
                if i < per_class:
                    ingest.upsert_annotation(
                        session, project, task_id, _annotation(100 + task_id, task_id, [label])
                    )
                truth[task_id] = label
                task_id += 1
    return truth


@pytest.fixture
def small_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        model={**SMALL_MODEL, "keep_versions": 2},
    )


@pytest.fixture
def store(small_settings: Settings) -> Iterator[Store]:
    yield from upgraded_store(small_settings)


def test_train_then_predict_serves_the_model(
    small_settings: Settings, store: Store, tmp_path: Path
) -> None:
    truth = _seed_project(store, 9, per_class=4)
    resolver = ImageResolver(small_settings.label_studio, small_settings.images)
    outcome = train_project(small_settings, store, 9, resolver.fetch)
    assert outcome.n_labels == 12 and outcome.path.exists()
    with store.session() as session:
        row = session.query(ModelVersion).one()
        assert row.version == outcome.version and row.n_labels == 12
        assert row.metrics["n_labels"] == 12 and "ece_after" in row.metrics
    app = create_app(small_settings, store=store)
    client: FlaskClient = app.test_client()
    try:
        assert client.get("/health").get_json()["projects"] == {"9": outcome.version}
        tasks = [
            {"id": t, "data": {"image": _data_url(COLORS[label], 1000 + t)}}
            for t, label in truth.items()
        ]
        tasks.append({"id": 999, "data": {"image": "data:image/png;base64,bm90IGFuIGltYWdl"}})
        body = client.post("/predict", json={"tasks": tasks, "project": "9.1"}).get_json()
    finally:
        shutdown(app)
    results = body["results"]
    assert len(results) == len(tasks)  # one per task, in order, even for a broken image
    predicted = [r["result"][0]["value"]["choices"][0] for r in results[:-1]]
    accuracy = np.mean([p == truth[t["id"]] for p, t in zip(predicted, tasks, strict=False)])
    assert accuracy >= 0.9
    first = results[0]
    assert first["model_version"] == outcome.version
    assert first["result"][0]["from_name"] == "label" and first["result"][0]["to_name"] == "image"
    assert 1 / 3 <= first["score"] <= 1.0
    assert results[-1] == {"result": [], "score": 0.0, "model_version": outcome.version}


def test_predict_answers_a_queued_task_its_queue_position(
    small_settings: Settings, store: Store
) -> None:
    """Label Studio stores /predict's answer under the current version, where uncertainty
    sampling orders by score: a task of the pushed queue must keep its place there."""
    from backend.loop.queue import QueueState, save_state

    truth = _seed_project(store, 9, per_class=4)
    resolver = ImageResolver(small_settings.label_studio, small_settings.images)
    outcome = train_project(small_settings, store, 9, resolver.fetch)
    queued = [t for t in truth if t % 6 in (5, 0)]  # the unlabeled ones, in some queue order
    order = np.array(queued[::-1], dtype=np.int64)
    save_state(
        small_settings,
        9,
        QueueState(outcome.version, order, np.zeros((len(order), 3), bool), (), None, 1),
    )
    app = create_app(small_settings, store=store)
    try:
        tasks = [{"id": t, "data": {"image": _data_url(COLORS[truth[t]], t)}} for t in (1, *queued)]
        body = app.test_client().post("/predict", json={"tasks": tasks, "project": "9.1"})
    finally:
        shutdown(app)
    scores = [r["score"] for r in body.get_json()["results"]]
    assert 1 / 3 <= scores[0] <= 1.0  # task 1 is labeled, not queued: the model's confidence
    n = len(order)
    assert scores[1:] == [list(order).index(t) / n for t in queued]


def test_versions_are_pruned_but_never_the_current(small_settings: Settings, store: Store) -> None:
    _seed_project(store, 9, per_class=3)
    resolver = ImageResolver(small_settings.label_studio, small_settings.images)
    outcomes = [train_project(small_settings, store, 9, resolver.fetch) for _ in range(4)]
    assert [o.path.exists() for o in outcomes] == [False, False, True, True]
    with store.session() as session:
        assert repo.ensure_project(session, 9).model_version == outcomes[-1].version
        assert session.query(ModelVersion).count() == 4  # history kept, checkpoints removed


def test_too_few_labels_is_a_clear_error(small_settings: Settings, store: Store) -> None:
    with store.session() as session:
        project = repo.ensure_project(session, 4)
        ingest.set_label_config(session, project, SINGLE_CONFIG)
        ingest.upsert_task(session, project, {"id": 1, "data": {"image": "data:,x"}})
        ingest.upsert_annotation(session, project, 1, _annotation(1, 1, ["cat"]))
    with pytest.raises(NotEnoughLabels, match="1 labeled tasks covering 1 classes"):
        train_project(small_settings, store, 4, lambda ref: b"")
    store.dispose()


def test_consensus_targets_single_and_multi() -> None:
    from backend.labelstudio.config import parse_label_config
    from backend.store.models import Annotation

    single = parse_label_config(SINGLE_CONFIG)

    def ann(i: int, task: int, labels: list[str]) -> Annotation:
        return Annotation(id=i, project_id=1, task_id=task, labels=labels)

    votes = [
        ann(1, 5, ["cat"]),
        ann(2, 5, ["dog"]),
        ann(3, 5, ["dog"]),  # majority
        ann(4, 6, ["cat"]),
        ann(5, 6, ["bird"]),  # tie: the later one wins
        ann(6, 7, ["unknown"]),
    ]  # not a label of the config: ignored
    targets = consensus_targets(votes, single)
    assert targets.task_ids.tolist() == [5, 6]
    assert targets.y.tolist() == [1, 2]
    multi = parse_label_config(MULTI_CONFIG)
    mvotes = [ann(1, 5, ["indoor", "person"]), ann(2, 5, ["indoor"]), ann(3, 6, ["person"])]
    mtargets = consensus_targets(mvotes, multi)
    assert mtargets.y.tolist() == [[1.0, 1.0], [0.0, 1.0]]
