"""The audit picks in the store: recorded per push, resolved by the next cycle, estimated."""

from __future__ import annotations

import numpy as np
from alembic import command
from sqlalchemy import text

from backend.loop import selection
from backend.store.db import Store, alembic_config
from backend.store.models import SelectionPick
from strategies import Pool


def _states(store: Store) -> dict[int, str]:
    with store.session() as session:
        return {p.task_id: p.state for p in session.query(SelectionPick).all()}


def test_picks_resolve_when_labels_arrive_and_expire_when_not(store: Store) -> None:
    arms = ("audit", "margin", "audit", "random", "audit")
    predicted = ["cat", "dog", "dog", None, "cat"]
    assert selection.record(store, 7, 1, "v1", [11, 12, 13, 14, 15], arms, predicted) == 5
    assert selection.audit_accuracy(store, 7) is None  # nothing labeled yet
    done = selection.resolve(store, 7, {11: "cat", 12: "dog", 13: "cat"})
    assert sorted(p.task_id for p in done) == [11, 12, 13]
    estimate = selection.audit_accuracy(store, 7)
    assert estimate is not None and (estimate.n, estimate.correct) == (2, 1)  # 11 right, 13 wrong
    assert estimate.low < 0.5 < estimate.high
    selection.record(store, 7, 2, "v2", [14], ("audit",), ["dog"])
    states = _states(store)
    assert states[15] == "expired"  # not labeled while push 1 was live
    assert states[11] == "labeled"
    assert selection.audit_accuracy(store, 8) is None  # per project


def test_strategy_show_lines_name_trusted_arms_and_both_accuracies() -> None:
    report = {
        "selection": {
            "mode": "adaptive",
            "arms": [
                {"arm": "random", "share": 0.1, "reason": "the reference"},
                {"arm": "margin", "share": 0.8, "reason": "won 6.0 of 7.0 ...: trusted"},
            ],
        },
        "audit_accuracy": {"n": 40, "accuracy": 0.8, "low": 0.69, "high": 0.88, "confidence": 0.9},
        "accuracy": 0.61,
    }
    lines = selection.describe_report(report)
    assert lines[0] == "selection (last cycle): adaptive"
    assert any("margin" in line and "trusted" in line for line in lines)
    assert any(line.startswith("audit accuracy (prequential, 40 items): 0.800") for line in lines)
    assert lines[-1].endswith("0.610")


def _pushed(store: Store, cycle: int, tasks: list[int], arms: tuple[str, ...]) -> None:
    selection.record(store, 7, cycle, f"v{cycle}", tasks, arms, [None] * len(tasks))
    selection.resolve(store, 7, {t: "x" for t in tasks})  # every pick labeled


def _judged(store: Store) -> dict[int, bool]:
    with store.session() as session:
        return {p.task_id: p.judged for p in session.query(SelectionPick).all()}


def test_arm_picks_wait_pooled_over_pushes_until_enough_to_judge(store: Store) -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, 6))
    x[np.arange(n), y] += 3.0
    labels = np.full(n, -1)
    task_ids = np.arange(1000, 1000 + n, dtype=np.int64)
    labels[:30] = y[:30]  # what the arms share
    pushes = [list(range(30 + 4 * c, 34 + 4 * c)) for c in range(4)]  # 2 picks + 2 audit each
    arms = ("margin", "audit", "margin", "audit")
    rewards = []
    for cycle, rows in enumerate(pushes, start=1):
        labels[rows] = y[rows]
        _pushed(store, cycle, [int(task_ids[r]) for r in rows], arms)
        pool = Pool(labels=labels.copy(), probs=np.full((n, 3), 1 / 3), embeddings=x)
        rewards.append(selection._judge(store, 7, pool, task_ids))
    # One or two labels per arm and push are a coin flip: nothing is judged until 5 wait ...
    assert rewards[0] == [] and rewards[1] == []
    # ... then the first 6 audit items (no earlier audit item to judge on) become the reference
    # set later judgments are scored on; the margin picks keep waiting ...
    assert rewards[2] == []
    judged = _judged(store)
    assert all(judged[int(task_ids[r])] for p in pushes[:3] for r in p[1::2])
    assert not any(judged[int(task_ids[r])] for p in pushes[:3] for r in p[::2])
    # ... and are judged once enough fresh audit items stand in for random's labels again.
    for cycle, rows in enumerate([list(range(50 + 4 * c, 54 + 4 * c)) for c in range(2)], start=5):
        labels[rows] = y[rows]
        _pushed(store, cycle, [int(task_ids[r]) for r in rows], arms)
        pool = Pool(labels=labels.copy(), probs=np.full((n, 3), 1 / 3), embeddings=x)
        rewards.append(selection._judge(store, 7, pool, task_ids))
    assert rewards[4] == []  # 4 fresh audit items: one short
    (reward,) = rewards[5]
    assert (reward.arm, reward.n) == ("margin", 6)  # 6 fresh audit items against 12 margin picks
    (loaded,) = selection.load_rewards(store, 7)
    assert (loaded.arm, loaded.cycle) == ("margin", 5)  # the sixth push: rewards age by pushes
    judged = _judged(store)
    assert all(judged.values())  # the judged arm's picks and the reference are used up


def test_upgrading_counts_the_picks_labeled_before_as_judged(store: Store) -> None:
    """Before pooling every labeled pick was judged the cycle after its push: an upgraded store
    must not judge them again; pending picks still wait for their labels."""
    command.downgrade(alembic_config(store.engine), "0013")
    columns = "project_id, cycle_id, task_id, arm, position, state, created_at"
    with store.engine.begin() as conn:
        for task, state in ((1, "labeled"), (2, "pending"), (3, "expired")):
            conn.execute(
                text(
                    f"INSERT INTO selection_picks ({columns}) "
                    f"VALUES (7, 1, {task}, 'margin', 0, '{state}', '2030-01-01 00:00:00')"
                )
            )
    store.upgrade()
    judged = _judged(store)
    assert judged[1] is True
    assert judged[2] is False
    selection.record(store, 7, 2, "v2", [4], ("audit",), [None])
    assert _judged(store)[4] is False  # new picks start unjudged


def test_a_task_picked_twice_or_audited_is_never_trained_on_and_scored_on(store: Store) -> None:
    """A task whose label went and came back may hold an older arm pick beside a newer one, or
    beside an audit pick: only one pick per task waits, and never an arm pick of an audit item."""
    n = 60
    labels = np.full(n, -1)
    labels[:40] = np.arange(40) % 2
    task_ids = np.arange(1000, 1000 + n, dtype=np.int64)
    _pushed(store, 1, [1000, 1001], ("margin", "margin"))
    _pushed(store, 2, [1000, 1001], ("margin", "audit"))  # both labeled again, re-picked
    x = np.random.default_rng(0).normal(size=(n, 4))
    pool = Pool(labels=labels, probs=np.full((n, 2), 0.5), embeddings=x)
    assert selection._judge(store, 7, pool, task_ids) == []  # 1 margin pick, 1 audit item
    with store.session() as session:
        picks = {(p.cycle_id, p.task_id): p.judged for p in session.query(SelectionPick).all()}
    assert picks == {(1, 1000): True, (1, 1001): True, (2, 1000): False, (2, 1001): False}
