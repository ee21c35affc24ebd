"""Label efficiency from ZERO labels with a simulated annotator, ours vs random and modAL.

    python benchmarks/bench_label_efficiency.py [--quick]

scikit-learn digits (raw pixels / 16 as features and embeddings), 75/25 stratified split per seed,
LogisticRegression as the learner, batches of 10 labels. Every method starts with no label; those
that need a model (our single model-based signals and every modAL strategy) take one random batch
first, the cold start is part of the race. Committees are 5 bootstrap LogisticRegressions. Prints
mean test accuracy at 50/100/200/300 labels and the labels needed to reach 95 % of the full-data
accuracy (mean over seeds; ">B" when a seed never gets there within the budget B).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from _common import SEEDS, machine, parse_args, print_table
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from strategies import REGISTRY, Pool
from strategies.combine import prioritize

BATCH = 10
CHECKPOINTS = (50, 100, 200, 300)
COMMITTEE = 5
DEFAULT_WEIGHTS = {"entropy": 1.0, "coverage": 0.5, "balance": 0.25}  # backend/settings.py
PROPOSED_WEIGHTS = {"margin": 1.0, "coverage": 0.5}
MODEL_SIGNALS = ("least_confidence", "margin", "entropy", "balance")
COMMITTEE_SIGNALS = ("bald", "vote_entropy", "kl_consensus")
EMBEDDING_SIGNALS = ("coverage", "coreset", "typicality", "cold_start")


@dataclass(frozen=True)
class Task:
    """One race: a method on one seed."""

    method: str
    seed: int
    budget: int


@dataclass
class State:
    """What a method sees each round."""

    X: np.ndarray
    labels: np.ndarray
    n_classes: int
    rng: np.random.Generator
    model: LogisticRegression | None = None
    members: list[LogisticRegression] | None = None

    def probs(self, model: LogisticRegression) -> np.ndarray:
        full = np.zeros((self.X.shape[0], self.n_classes))
        full[:, model.classes_] = model.predict_proba(self.X)
        return full


def _fit(X: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(max_iter=300).fit(X, y)


def _committee(state: State) -> list[LogisticRegression]:
    idx = np.flatnonzero(state.labels >= 0)
    members = []
    for _ in range(COMMITTEE):  # members, not items
        boot = state.rng.choice(idx, size=idx.shape[0], replace=True)
        while np.unique(state.labels[boot]).shape[0] < 2:
            boot = state.rng.choice(idx, size=idx.shape[0], replace=True)
        members.append(_fit(state.X[boot], state.labels[boot]))
    return members


def _pool(state: State, *, committee: bool = False) -> Pool:
    probs = state.probs(state.model) if state.model is not None else None
    stack = None
    if committee and state.model is not None:
        stack = np.stack([state.probs(m) for m in _committee(state)])
    return Pool(labels=state.labels, probs=probs, committee=stack, embeddings=state.X)


def _random_batch(state: State) -> np.ndarray:
    return state.rng.choice(np.flatnonzero(state.labels < 0), BATCH, replace=False)


def _ours(name: str) -> Callable[[State], np.ndarray]:
    needs_model = name in MODEL_SIGNALS or name in COMMITTEE_SIGNALS

    def pick(state: State) -> np.ndarray:
        if needs_model and state.model is None:
            return _random_batch(state)
        pool = _pool(state, committee=name in COMMITTEE_SIGNALS)
        return REGISTRY[name](pool, BATCH, rng=state.rng).indices

    return pick


def _combination(weights: dict[str, float], **options: Any) -> Callable[[State], np.ndarray]:
    def pick(state: State) -> np.ndarray:
        pool = _pool(state)
        result = prioritize(pool, weights, rng=state.rng, batch_size=BATCH, **options)
        return result.order[:BATCH]

    return pick


def _modal(query: str) -> Callable[[State], np.ndarray]:
    from modAL import disagreement, uncertainty
    from modAL.models import ActiveLearner, Committee

    def pick(state: State) -> np.ndarray:
        if state.model is None:
            return _random_batch(state)
        unlabeled = np.flatnonzero(state.labels < 0)
        X = state.X[unlabeled]
        if query == "qbc":
            learners = [ActiveLearner(estimator=m) for m in _committee(state)]
            idx = disagreement.vote_entropy_sampling(Committee(learners), X, n_instances=BATCH)
        else:
            fn = getattr(uncertainty, f"{query}_sampling")
            idx = fn(state.model, X, n_instances=BATCH)
        idx = idx[0] if isinstance(idx, tuple) else idx
        return unlabeled[np.asarray(idx)]

    return pick


def methods() -> dict[str, Callable[[State], np.ndarray]]:
    """Every contender, baselines first."""
    table: dict[str, Callable[[State], np.ndarray]] = {"random": _ours("random")}
    for query in ("uncertainty", "margin", "entropy", "qbc"):
        table[f"modAL {query}"] = _modal(query)
    for name in MODEL_SIGNALS + COMMITTEE_SIGNALS + EMBEDDING_SIGNALS:
        table[name] = _ours(name)
    table["ours: settings default (entropy 1, coverage .5, balance .25)"] = _combination(
        DEFAULT_WEIGHTS
    )
    table["ours: proposed default (margin 1, coverage .5)"] = _combination(PROPOSED_WEIGHTS)
    table["  ablation: proposed, no batch diversity"] = _combination(
        PROPOSED_WEIGHTS, diversity="none"
    )
    table["  ablation: proposed, no cold start"] = _combination(
        PROPOSED_WEIGHTS, cold_start_labels=0
    )
    return table


def _split(seed: int) -> tuple[np.ndarray, ...]:
    digits = load_digits()
    X = digits.data / 16.0
    return tuple(
        train_test_split(
            X, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
        )
    )


def race(task: Task) -> tuple[str, int, dict[int, float], float]:
    """Run one method on one seed; returns test accuracy per label count and the full accuracy."""
    with threadpool_limits(1):
        X, X_test, y, y_test = _split(task.seed)
        full = _fit(X, y).score(X_test, y_test)
        rng = np.random.default_rng(task.seed)
        state = State(X=X, labels=np.full(len(y), -1), n_classes=10, rng=rng)
        pick = methods()[task.method]
        curve: dict[int, float] = {}
        while (n_labeled := int((state.labels >= 0).sum())) < task.budget:
            chosen = pick(state)
            state.labels[chosen] = y[chosen]
            n_labeled += len(chosen)
            known = state.labels >= 0
            if np.unique(state.labels[known]).shape[0] >= 2:
                state.model = _fit(X[known], state.labels[known])
                curve[n_labeled] = state.model.score(X_test, y_test)
        return task.method, task.seed, curve, full


def summarize(results: list[tuple[str, int, dict[int, float], float]], budget: int) -> None:
    """Aggregate over seeds and print one table."""
    names = list(dict.fromkeys(r[0] for r in results))
    rows = []
    for name in names:
        runs = [r for r in results if r[0] == name]
        accs = [np.mean([r[2].get(c, np.nan) for r in runs]) for c in CHECKPOINTS]
        needed = []
        for _, _, curve, full in runs:
            hits = [n for n, acc in sorted(curve.items()) if acc >= 0.95 * full]
            needed.append(hits[0] if hits else np.inf)
        reached = f"{np.mean(needed):.0f}" if np.isfinite(needed).all() else f">{budget}"
        rows.append([name, *(f"{a:.3f}" for a in accs), reached, f"{np.mean(accs):.3f}"])
    full = np.mean([r[3] for r in results if r[0] == names[0]])
    title = (
        f"Label efficiency, digits (raw pixels), LogisticRegression, batch {BATCH}, "
        f"{len({r[1] for r in results})} seeds, full-data accuracy {full:.3f} ({machine()})"
    )
    headers = ["method", *(f"acc@{c}" for c in CHECKPOINTS), "labels to 95% of full", "mean acc"]
    print_table(headers, rows, title=title)


def main() -> None:
    args = parse_args(__doc__ or "")
    seeds = SEEDS[: args.seeds]
    budget = 300 if args.quick else 500
    tasks = [Task(name, seed, budget) for name in methods() for seed in seeds]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(race, tasks))
    summarize(results, budget)


if __name__ == "__main__":
    main()
