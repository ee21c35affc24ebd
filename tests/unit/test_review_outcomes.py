"""Measured precision of review flags, and several annotators weighed by their reliability."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

import numpy as np
from flask import Flask

from backend.labelstudio.config import parse_label_config
from backend.loop.push import (
    LabelStudioPush,
    Suspect,
    mark_reviewed,
    push_review,
    review_outcomes,
    settled_tasks,
)
from backend.loop.targets import consensus_targets
from backend.store.db import Store
from backend.store.models import Annotation, Project, ReviewFlag, Task, utcnow
from strategies.label_quality import crowd_consensus
from tests.conftest import ADMIN, SINGLE_CONFIG
from tests.fake_labelstudio import FakeLabelStudio


def _flag_three(store: Store) -> FakeLabelStudio:
    with store.session() as session:
        session.add(Project(id=7))
        for i in range(3):
            session.add(Task(id=100 + i, project_id=7, image_ref=f"/x/{i}", data={"image": "i"}))
    ls = FakeLabelStudio(n_tasks=0, n_labeled=0)
    suspects = [Suspect(100 + i, 0.9, "why", "cat", "dog", 0.9) for i in range(3)]
    push_review(
        cast(LabelStudioPush, ls), store, 7, "label_error", suspects, max_flags=10, cycle_id=5
    )
    return ls


def _annotate(store: Store, task: int, later: bool) -> None:
    with store.session() as session:
        flagged = session.query(ReviewFlag).filter_by(task_id=task).one().flagged_at
        when = flagged + timedelta(seconds=5 if later else -5)
        session.add(
            Annotation(id=task, project_id=7, task_id=task, labels=["cat"], ls_updated_at=when)
        )


def test_a_changed_label_confirms_an_unchanged_one_rejects(store: Store) -> None:
    _flag_three(store)
    for task in (100, 101, 102):
        _annotate(store, task, later=task != 102)  # 102 was not touched since the flag
    current = {100: "dog", 101: "cat", 102: "cat"}  # 100 fixed, 101 saved unchanged
    assert mark_reviewed(store, 7, current) == {"confirmed": 1, "rejected": 1}
    outcomes = review_outcomes(store, 7)["label_error"]
    expected = {"confirmed": 1, "rejected": 1, "pending": 1, "withdrawn": 0, "precision": 0.5}
    assert outcomes["total"] == expected
    assert outcomes["cycles"] == {"5": expected}
    # Settled tasks are not flagged again while their label stays as the reviewer left it ...
    assert settled_tasks(store, 7, "label_error", current) == {100, 101}
    # ... and are judged again once it changes.
    assert settled_tasks(store, 7, "label_error", {**current, 101: "bird"}) == {100}
    assert mark_reviewed(store, 7, current) == {"confirmed": 0, "rejected": 0}  # counted once


def test_an_unreliable_annotator_ranks_last_and_weighs_less() -> None:
    rng = np.random.default_rng(0)
    n, n_classes = 400, 4
    truth = rng.integers(0, n_classes, n)
    annotations = np.full((n, 3), -1)
    for a, error in enumerate((0.05, 0.4, 0.1)):
        wrong = rng.random(n) < error
        annotations[:, a] = np.where(
            wrong, (truth + rng.integers(1, n_classes, n)) % n_classes, truth
        )
    crowd = crowd_consensus(annotations, n_classes)
    assert crowd.reliability.argmin() == 1
    assert abs(crowd.reliability[1] - 0.6) < 0.08
    assert (crowd.consensus.argmax(axis=1) == truth).mean() > 0.95


def test_the_training_consensus_weighs_annotators_by_reliability() -> None:
    cfg = parse_label_config(SINGLE_CONFIG)
    a, b = cfg.labels[0], cfg.labels[1]
    now = utcnow()
    anns = []
    # Annotators 1 and 2 agree on 30 tasks; annotator 3 contradicts annotator 1 on 10 of them.
    for task in range(30):
        anns.append(
            Annotation(
                id=len(anns) + 1,
                project_id=7,
                task_id=task,
                annotator=1,
                labels=[a],
                ls_updated_at=now,
            )
        )
        anns.append(
            Annotation(
                id=len(anns) + 1,
                project_id=7,
                task_id=task,
                annotator=2,
                labels=[a],
                ls_updated_at=now,
            )
        )
    for task in range(30, 40):  # annotator 3 (wrong above) disagrees with annotator 1 alone
        anns.append(
            Annotation(
                id=len(anns) + 1,
                project_id=7,
                task_id=task,
                annotator=1,
                labels=[a],
                ls_updated_at=now,
            )
        )
        anns.append(
            Annotation(
                id=len(anns) + 1,
                project_id=7,
                task_id=task,
                annotator=3,
                labels=[b],
                ls_updated_at=now,
            )
        )
    for task in range(30):
        anns.append(
            Annotation(
                id=len(anns) + 1,
                project_id=7,
                task_id=task,
                annotator=3,
                labels=[b],
                ls_updated_at=now,
            )
        )
    targets = consensus_targets(anns, cfg)
    y = dict(zip(targets.task_ids.tolist(), targets.y.tolist(), strict=True))
    # A plain vote would tie 1:1 on tasks 30-39 and take the most recent (annotator 3's) label.
    assert all(y[t] == 0 for t in range(30, 40))


def test_the_cycles_api_reports_running_precision(store: Store, app: Flask) -> None:
    _flag_three(store)
    _annotate(store, 100, later=True)
    mark_reviewed(store, 7, {100: "dog"})
    body = app.test_client().get("/api/projects/7/cycles", headers=ADMIN).get_json()
    assert body["review"]["label_error"] == {
        "confirmed": 1,
        "rejected": 0,
        "pending": 2,
        "withdrawn": 0,
        "precision": 1.0,
    }
