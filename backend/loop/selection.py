"""The audit sample and the adaptive selection in the cycle: what is pushed, recorded and learned.

Each cycle, after scoring:

1. :func:`resolve` marks the pending picks of the previous push whose task is labeled now: those
   labels arrived while that push was the live queue. An audit pick's outcome (was the model's
   prediction at push time right?) feeds :func:`audit_accuracy`.
2. :func:`plan` judges each arm once its labeled picks, pooled over pushes, are enough
   (:func:`strategies.bandit.judge_pending`) and files the rewards, sets
   the arms' shares from every reward of the project (:func:`strategies.bandit.allocate`; with
   ``strategy.selection: fixed`` the configured weights alone) and builds the queue: audit items
   drawn uniformly, interleaved with the arms' picks.
3. After Label Studio took the push, :func:`record` expires what the previous push left unlabeled
   and records the new push's first positions (arm, audit, the model's prediction).

An annotation saved between this cycle's reconcile and its push is counted for the new push; at
``loop.retrain_after`` labels per cycle that is a handful of items at most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select, update

from backend.loop.contract import Scored, Snapshot
from backend.loop.doubt import given_labels
from backend.loop.push import QueueItem
from backend.settings import Settings
from backend.store.db import Store
from backend.store.models import Cycle, SelectionPick, SelectionReward, utcnow
from strategies import Pool
from strategies.audit import AccuracyEstimate, prequential_accuracy
from strategies.bandit import (
    ARMS,
    AUDIT,
    Allocation,
    Belief,
    Reward,
    build_queue,
    judge_pending,
    proxy_features,
)
from strategies.combine import Priority

#: The audit estimate uses the newest this many audit labels (older models weigh less then).
AUDIT_WINDOW = 200


@dataclass(frozen=True)
class Plan:
    """The queue this cycle pushes and why.

    Attributes:
        priority: the scored priority with ``order``/``priority`` replaced by the built queue.
        arms: arm of each of the first ``len(arms)`` queue positions ("audit" for audit items).
        mode: "adaptive" or "fixed" (multi-label projects and a zero audit share run fixed).
        allocation: the shares and beliefs (fixed: "combined" alone, random none).
        rewards: the rewards filed this cycle.
        crossfit: the current model's accuracy on the audit items (:func:`crossfit_accuracy`).
    """

    priority: Priority
    arms: tuple[str, ...]
    mode: str
    allocation: Allocation
    rewards: tuple[Reward, ...]
    crossfit: AccuracyEstimate | None

    def metrics(self, prequential: AccuracyEstimate | None) -> dict[str, object]:
        """What the cycle record and the cycles API carry, beside the cross-validated metrics:
        the audit estimates (prequential, and cross-fitted for the current model) and the
        selection's report."""
        return {
            "audit_accuracy": prequential.as_dict() if prequential is not None else None,
            "audit_accuracy_crossfit": self.crossfit.as_dict() if self.crossfit else None,
            "selection": self.report(),
        }

    def report(self) -> dict[str, object]:
        """JSON-ready summary for the cycle's metrics, the diagnosis and ``strategy show``."""
        return {
            "mode": self.mode,
            "shares": {a: round(s, 4) for a, s in self.allocation.shares.items()},
            "arms": [_belief_dict(b) for b in self.allocation.beliefs],
            "audit_items": sum(a == AUDIT for a in self.arms),
            "rewards": [
                {"arm": r.arm, "win": r.win, "gain": r.gain, "n": r.n} for r in self.rewards
            ],
        }


def _belief_dict(b: Belief) -> dict[str, object]:
    return {
        "arm": b.arm,
        "share": round(b.share, 4),
        "trusted": b.trusted,
        "p_better": round(b.p_better, 4),
        "wins": round(b.wins, 3),
        "comparisons": round(b.comparisons, 3),
        "reason": b.reason,
    }


def predicted_string(labels: Sequence[str]) -> str:
    """A suggestion as text, as :func:`backend.loop.doubt.given_labels` writes a given label (tags
    in the label config's order, comma-joined)."""
    return ", ".join(labels)


def resolve(store: Store, project_id: int, labels: Mapping[int, str]) -> list[SelectionPick]:
    """Mark pending picks whose task is labeled now; returns them (detached)."""
    now = utcnow()
    with store.session() as session:
        pending = session.scalars(
            select(SelectionPick).where(
                SelectionPick.project_id == project_id, SelectionPick.state == "pending"
            )
        ).all()
        done = []
        for pick in pending:
            label = labels.get(pick.task_id)
            if label is None:
                continue
            pick.state, pick.label, pick.resolved_at = "labeled", label, now
            pick.correct = None if pick.predicted is None else pick.predicted == label
            done.append(pick)
        session.flush()
        session.expunge_all()
    return done


def audit_accuracy(
    store: Store, project_id: int, *, window: int = AUDIT_WINDOW
) -> AccuracyEstimate | None:
    """The prequential accuracy of the project's serving models on its pool, from the newest
    ``window`` audit labels that had a prediction; None before there is one.

    For the review thresholds and the forecast: unlike cross-validated accuracy on the labels the
    strategies chose (the hard items), this is unbiased for the pool.
    """
    with store.session() as session:
        outcomes = session.scalars(
            select(SelectionPick.correct)
            .where(
                SelectionPick.project_id == project_id,
                SelectionPick.arm == AUDIT,
                SelectionPick.state == "labeled",
                SelectionPick.correct.is_not(None),
            )
            .order_by(SelectionPick.id.desc())
            .limit(window)
        ).all()
    if not outcomes:
        return None
    return prequential_accuracy(np.array([bool(c) for c in outcomes], dtype=bool))


def load_rewards(store: Store, project_id: int) -> list[Reward]:
    """Every reward of the project, filed under the number of its push among the project's pushes
    (0, 1, ... in order), so that rewards age by pushes, also where judgments skip some."""
    with store.session() as session:
        rows = session.scalars(
            select(SelectionReward)
            .where(SelectionReward.project_id == project_id)
            .order_by(SelectionReward.cycle_id)
        ).all()
        pushes = session.scalars(
            select(SelectionPick.cycle_id).where(SelectionPick.project_id == project_id).distinct()
        ).all()
        numbers = {c: i for i, c in enumerate(sorted({*pushes, *(r.cycle_id for r in rows)}))}
        return [Reward(numbers[r.cycle_id], r.arm, r.win, r.gain, r.n) for r in rows]


def _judge(store: Store, project_id: int, pool: Pool, task_ids: NDArray[np.int64]) -> list[Reward]:
    """File the rewards of the arms whose labeled picks, pooled over pushes, are enough to judge
    (:func:`strategies.bandit.judge_pending`), and mark the picks the judgment used."""
    if pool.embeddings is None or pool.multilabel:
        return []
    row = {int(t): i for i, t in enumerate(task_ids)}
    with store.session() as session:
        waiting = session.execute(
            select(
                SelectionPick.id, SelectionPick.task_id, SelectionPick.arm, SelectionPick.cycle_id
            )
            .where(
                SelectionPick.project_id == project_id,
                SelectionPick.state == "labeled",
                SelectionPick.judged.is_(False),
            )
            .order_by(SelectionPick.cycle_id, SelectionPick.position)
        ).all()
    audit = _audit_rows(store, project_id, pool, row)
    audited = set(audit.tolist())
    pending: dict[str, list[int]] = {}
    ids: dict[str, list[int]] = {}
    retired: list[int] = []  # picks that can never be judged fairly
    seen: set[int] = set()
    for pick_id, task_id, arm, _ in reversed(waiting):  # newest first: one pick per task
        r = row.get(task_id)
        if r is None or not pool.labeled[r]:
            continue  # no longer labeled: waits until it is again
        if r in seen or (arm != AUDIT and r in audited):
            retired.append(pick_id)  # picked again later, or an audit item (scored on)
            continue
        seen.add(r)
        pending.setdefault(arm, []).append(r)
        ids.setdefault(arm, []).append(pick_id)
    for arm in pending:  # oldest first, as judged
        pending[arm].reverse()
        ids[arm].reverse()
    used = list(retired)
    rewards: list[Reward] = []
    if pending.keys() - {AUDIT}:
        cycle_id = max(c for *_, c in waiting)
        rng = np.random.default_rng(cycle_id)
        rewards, consumed = judge_pending(
            proxy_features(pool.embeddings, rng=rng, basis=pool.basis),
            pool.labels,
            pending,
            audit,
            cycle=cycle_id,
            n_classes=int(pool.n_classes or pool.labels.max() + 1),
        )
        used += [i for arm in consumed for i in ids.get(arm, [])]
    with store.session() as session:
        if used:
            session.execute(
                update(SelectionPick).where(SelectionPick.id.in_(used)).values(judged=True)
            )
        session.add_all(
            SelectionReward(
                project_id=project_id, cycle_id=r.cycle, arm=r.arm, win=r.win, gain=r.gain, n=r.n
            )
            for r in rewards
        )
    return rewards


def _audit_rows(
    store: Store, project_id: int, pool: Pool, row: Mapping[int, int]
) -> NDArray[np.int64]:
    """Pool rows of every audit item whose label arrived and is still there."""
    with store.session() as session:
        audited = session.scalars(
            select(SelectionPick.task_id).where(
                SelectionPick.project_id == project_id,
                SelectionPick.arm == AUDIT,
                SelectionPick.state == "labeled",
            )
        ).all()
    rows = sorted({row[t] for t in audited if t in row and pool.labeled[row[t]]})
    return np.asarray(rows, dtype=np.int64)


def crossfit_accuracy(pool: Pool, audit: NDArray[np.int64]) -> AccuracyEstimate | None:
    """The current model's accuracy from its out-of-sample (cross-fitted) predictions of the
    labeled audit items: unbiased for the pool like the prequential figure (the audit items are
    uniform draws), and about the model serving now (its folds train on (K-1)/K of the labels, so
    it errs a little low). None without a model or audit labels; single-label only."""
    if pool.oos_probs is None or pool.multilabel or audit.shape[0] == 0:
        return None
    return prequential_accuracy(pool.oos_probs[audit].argmax(axis=1) == pool.labels[audit])


def plan(
    settings: Settings,
    store: Store,
    project_id: int,
    pool: Pool,
    priority: Priority,
    task_ids: NDArray[np.int64],
    labels: Mapping[int, str],
    *,
    write: bool = True,
) -> Plan:
    """Resolve the previous push, reward its arms, and build this cycle's queue.

    Args:
        write: False builds the queue from the rewards already filed and changes nothing (the
            settings preview); picks whose labels arrived since the last cycle are then neither
            resolved nor judged, which the next cycle does before it builds its queue.
    """
    strategy = settings.strategy
    rng = np.random.default_rng([settings.model.seed, int(pool.labeled.sum())])
    adaptive = strategy.selection == "adaptive" and strategy.audit_share > 0
    adaptive = adaptive and not pool.multilabel and pool.embeddings is not None
    rewards: list[Reward] = []
    if write:
        resolve(store, project_id, labels)
        rewards = _judge(store, project_id, pool, task_ids) if adaptive else []
    built, allocation = build_queue(
        pool,
        priority.order,
        load_rewards(store, project_id) if adaptive else [],
        rng=rng,
        batch_size=strategy.batch_size,
        audit_share=strategy.audit_share,
        adaptive=adaptive,
    )
    row = {int(t): i for i, t in enumerate(task_ids)}
    current = crossfit_accuracy(pool, _audit_rows(store, project_id, pool, row))
    position = np.full(pool.n, np.nan)
    position[built.order] = np.arange(built.order.shape[0], dtype=np.float64)
    queued = replace(priority, order=built.order, priority=position)
    mode = "adaptive" if adaptive else "fixed"
    return Plan(queued, built.arms, mode, allocation, tuple(rewards), current)


def record(
    store: Store,
    project_id: int,
    cycle_id: int,
    version: str,
    task_ids: Sequence[int],
    arms: Sequence[str],
    predicted: Sequence[str | None],
) -> int:
    """Expire the previous push's unlabeled picks and record this push's; returns picks written.

    Args:
        task_ids: the queue's first ``len(arms)`` tasks, in queue order.
        arms: the arm (or "audit") of each.
        predicted: the model's suggestion for each as text; None before a model exists.
    """
    now = utcnow()
    with store.session() as session:
        session.execute(
            update(SelectionPick)
            .where(SelectionPick.project_id == project_id, SelectionPick.state == "pending")
            .values(state="expired", resolved_at=now)
        )
        session.add_all(
            SelectionPick(
                project_id=project_id,
                cycle_id=cycle_id,
                task_id=int(task),
                arm=arm,
                position=position,
                model_version=version,
                predicted=guess,
                state="pending",
                created_at=now,
            )
            for position, (task, arm, guess) in enumerate(
                zip(task_ids, arms, predicted, strict=True)
            )
        )
    return len(arms)


__all__ = [
    "ARMS",
    "Plan",
    "audit_accuracy",
    "plan",
    "record",
    "record_picks",
    "resolve",
    "select_stage",
]


def latest_report(store: Store, project_id: int) -> dict[str, object] | None:
    """The newest succeeded cycle's selection report and audit estimates (for ``strategy
    show`` and the dashboard); None before such a cycle."""
    with store.session() as session:
        metrics = session.scalars(
            select(Cycle.metrics)
            .where(Cycle.project_id == project_id, Cycle.state == "succeeded")
            .order_by(Cycle.id.desc())
            .limit(1)
        ).first()
    if not metrics or "selection" not in metrics:
        return None
    keys = ("selection", "audit_accuracy", "audit_accuracy_crossfit", "accuracy")
    return {k: metrics.get(k) for k in keys}


def describe_report(report: dict[str, object]) -> list[str]:
    """``strategy show`` lines: the mode, each arm's share and why it is (not) trusted, and the
    audit estimate beside the cross-validated accuracy."""
    chosen = report["selection"]
    if not isinstance(chosen, dict):
        return []
    lines = [f"selection (last cycle): {chosen['mode']}"]
    for arm in chosen.get("arms", []):
        lines.append(f"  {arm['arm']:<10} share {arm['share']:.2f}  {arm['reason']}")
    audit = report.get("audit_accuracy")
    if isinstance(audit, dict):
        lines.append(
            f"audit accuracy (prequential, {audit['n']} items): {audit['accuracy']:.3f} "
            f"[{audit['low']:.3f}, {audit['high']:.3f}] at {audit['confidence']:.0%}"
        )
    if isinstance(report.get("accuracy"), float):
        lines.append(f"cross-validated accuracy (on the chosen labels): {report['accuracy']:.3f}")
    return lines


def select_stage(
    settings: Settings,
    store: Store,
    project_id: int,
    snap: Snapshot,
    scored: Scored,
    *,
    write: bool = True,
) -> Plan:
    """The audit share and the adaptive selection over the scored pool (``write=False``: the
    preview's, which files nothing; :func:`plan`)."""
    return plan(
        settings,
        store,
        project_id,
        scored.pool,
        scored.priority,
        scored.task_ids,
        given_labels(snap),
        write=write,
    )


def record_picks(
    store: Store,
    project_id: int,
    cycle_id: int,
    version: str,
    items: Sequence[QueueItem],
    chosen: Plan,
) -> int:
    """Record the pushed queue's first positions: arm or audit, and the model's prediction."""
    head = items[: len(chosen.arms)]
    return record(
        store,
        project_id,
        cycle_id,
        version,
        [item.task_id for item in head],
        chosen.arms[: len(head)],
        [predicted_string(item.labels) if item.labels else None for item in head],
    )
