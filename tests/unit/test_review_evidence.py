"""What the cycle feeds the label-quality review: out-of-bag committee votes and label strata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.labelstudio.config import LabelConfig
from backend.loop.contract import Snapshot, Trained
from backend.loop.cycle import build_pool
from backend.loop.fit import fit
from backend.loop.review import (
    CHOSEN,
    RANDOM_ORDER,
    UNRECORDED,
    committee_votes,
    decide,
    label_strata,
    with_label_strata,
)
from backend.loop.targets import consensus_targets
from backend.store.db import Store
from backend.store.models import Annotation, SelectionPick, Task
from strategies.label_quality import label_quality
from tests.conftest import SMALL_MODEL, make_settings


def _project(n: int, labeled: int) -> tuple[Snapshot, dict[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = np.eye(3)[y] * 3 + rng.normal(size=(n, 3))
    cfg = LabelConfig("label", "image", "image", ("a", "b", "c"), multiple=False)
    annotations = [
        Annotation(id=t, task_id=t, annotator=1, labels=[cfg.labels[y[t - 1]]])
        for t in range(1, labeled + 1)
    ]
    tasks = [Task(id=t, image_ref=f"sim://{t}") for t in range(1, n + 1)]
    snap = Snapshot(cfg, tasks, annotations, consensus_targets(annotations, cfg))
    return snap, {t: x[t - 1].astype(np.float32) for t in range(1, n + 1)}


def test_the_pool_carries_each_labels_out_of_bag_committee_votes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model={**SMALL_MODEL, "committee_size": 4})
    snap, embeddings = _project(80, 60)
    model, used, _ = fit(settings, snap.cfg, snap.targets, embeddings, "test")
    task_ids, pool, _ = build_pool(snap, embeddings, Trained(model, used, "v1"))
    seen = model.committee_seen
    assert seen is not None and seen.shape == (60, 4)
    assert 0.5 < seen.mean() < 0.8  # a bootstrap resample (plus early-stopping items) each
    assert pool.committee is not None and pool.committee_oos is not None
    row = {int(t): i for i, t in enumerate(task_ids)}
    for k, task in enumerate(used.task_ids):
        i, out = row[int(task)], ~seen[k]
        expected = pool.committee[out, i].mean(axis=0) if out.any() else np.full(3, 1 / 3)
        np.testing.assert_allclose(pool.committee_oos[i], expected)
    quality = decide(settings, pool)
    assert quality is not None and len(quality.weights) == 3  # model, neighbours, committee
    direct = label_quality(
        pool.labels, pool.oos_probs, embeddings=pool.embeddings, extra=[pool.committee_oos]
    )
    np.testing.assert_allclose(quality.p_error, direct.p_error)


def test_committee_votes_need_a_bootstrap_committee() -> None:
    members = np.full((2, 3, 2), 0.5)
    assert committee_votes(None, None, []) is None
    assert committee_votes(members, None, [0]) is None  # MC dropout: every member saw it
    votes = committee_votes(members, np.array([[True, True]]), [1])
    assert votes is not None
    np.testing.assert_allclose(votes[1], [0.5, 0.5])  # uniform: no out-of-bag member


def _pick(task: int, arm: str, state: str, cycle: int) -> SelectionPick:
    return SelectionPick(
        project_id=3, cycle_id=cycle, task_id=task, arm=arm, position=0, state=state
    )


def test_strata_come_from_the_pick_each_label_arrived_on(store: Store) -> None:
    with store.session() as session:
        session.add_all(
            [
                _pick(1, "audit", "labeled", 1),
                _pick(2, "random", "labeled", 1),
                _pick(3, "margin", "labeled", 1),
                _pick(4, "margin", "pending", 2),  # not labeled on it
                _pick(6, "audit", "expired", 1),
                _pick(6, "typiclust", "labeled", 2),
                _pick(7, "audit", "labeled", 1),
            ]
        )
        session.add(
            SelectionPick(
                project_id=9, cycle_id=1, task_id=5, arm="audit", position=0, state="labeled"
            )
        )  # another project's
    tasks = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
    strata = label_strata(store, 3, tasks)
    assert strata.tolist() == [RANDOM_ORDER, RANDOM_ORDER, CHOSEN, UNRECORDED, UNRECORDED, CHOSEN]
    snap, embeddings = _project(6, 6)
    _, pool, _ = build_pool(snap, embeddings, None)
    stratified = with_label_strata(store, 3, tasks, pool)
    assert stratified.strata is not None and stratified.strata.tolist() == strata.tolist()
