"""Label efficiency from ZERO labels with a simulated annotator, ours vs random and modAL.

    python benchmarks/bench_label_efficiency.py [--dataset NAME ...] [--quick]

Datasets (all offline, shipped inside installed packages; one table each):
- ``digits``: scikit-learn's 8x8 digits, raw pixels / 16 as features and embeddings;
- ``digits-emb``: the same digits rendered as 64 px images
  (``backend.simulate.sets.digit_images``, bicubic)
  and embedded by the default backbone, EfficientNet-Lite0 at 96 px (1280-d);
- ``textures``: scikit-image's brick / grass / gravel photos in 32 px tiles (``bench_model``),
  Lite0 embeddings at 96 px; easy (3 classes, ~0.99);
- ``tiles``: a harder 10-class set, 200 grayscale 32 px tiles from each of ten scikit-image photos
  (the label is the photo; flat sky or background tiles are genuinely ambiguous), Lite0 at 96 px.

Embeddings are cached on disk (``.cache/bench-embeddings``, keyed by image hash and backbone), so
only the first run pays for the network; each seed reduces them to 64 PCA components fitted on its
unlabeled pool (1280-d fits cost ~8x more for 1-3 points of full-data accuracy). 75/25 stratified
split per seed, LogisticRegression as the learner, batches of 10 labels. Every method starts with
no label; those that need a model (our single model-based signals and every modAL strategy) take
one random batch first, the cold start is part of the race. Committees are 5 bootstrap
LogisticRegressions. "ours: default" uses ``StrategySettings().weights`` and ``.fade_after``.
Prints mean test accuracy at 50/100/200/300 labels and the labels needed to reach 95 % of the
full-data accuracy (mean over seeds; ">B" when a seed never gets there within the budget B).
Rows ``NAME + audit`` carry the audit share every push carries (10 %, uniform draws; the same share
adaptive has, and what ``strategy.selection: fixed`` pushes), so a fixed strategy and the adaptive
selection are compared on the same footing.
``--quick``: the first named dataset only, 3 seeds, budget 300.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import SEEDS, machine, print_table
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from backend.loop.selection import AUDIT_WINDOW
from backend.settings import StrategySettings
from backend.simulate.sets import GENERATED, generate
from strategies import REGISTRY, Pool
from strategies.audit import audit_count, draw_audit, prequential_accuracy
from strategies.bandit import AUDIT, build_queue, judge_pending, proxy_features
from strategies.base import threads
from strategies.combine import prioritize

BATCH = 10
CHECKPOINTS = (10, 20, 40, 60, 100, 200, 300)
#: Rows compared by the issue's goals: random, the single fixed strategies, the configured
#: combination and the adaptive selection (``--methods contenders``), and each fixed row with the
#: audit share every push carries (``strategy.selection: fixed`` included), as adaptive does.
FIXED = ("margin", "entropy", "cold_start", "default")
CONTENDERS = ("random", *FIXED, "adaptive", *(f"{name} + audit" for name in FIXED))
AUDIT_SHARE = 0.1
#: Audit estimates are checked once they rest on this many audit labels.
AUDIT_MIN = 5
COMMITTEE = 5
DEFAULT_WEIGHTS = dict(StrategySettings().weights)
DEFAULT_FADE = dict(StrategySettings().fade_after)
MODEL_SIGNALS = ("least_confidence", "margin", "entropy", "balance")
COMMITTEE_SIGNALS = ("bald", "vote_entropy", "kl_consensus")
EMBEDDING_SIGNALS = ("coverage", "coreset", "typicality", "cold_start")
DATASETS = ("digits", "digits-emb", "textures", "tiles", "nuisance", "rare")
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench-embeddings"
EMBED_SIZE = 96  # Lite0 input side for these small images; 224 is slower and no better on digits
PCA_DIMS = 64  # 1280-d fits are ~8x slower for 1-3 points of full-data accuracy
TILE_PHOTOS = (
    "brick", "grass", "gravel", "camera", "moon",
    "astronaut", "coffee", "rocket", "immunohistochemistry", "cell",
)  # fmt: skip
TILES_PER_PHOTO = 200


@dataclass(frozen=True)
class Task:
    """One race: a method on one seed of one dataset (features in ``data``, an .npz)."""

    method: str
    seed: int
    budget: int
    data: Path


@dataclass
class State:
    """What a method sees each round."""

    X: np.ndarray
    labels: np.ndarray
    n_classes: int
    rng: np.random.Generator
    model: LogisticRegression | None = None
    members: list[LogisticRegression] | None = None
    y: np.ndarray | None = None  # true classes, for the audit checks only
    test_accuracy: float = float("nan")  # of ``model``, on the test split
    memory: dict[str, Any] = field(default_factory=dict)  # a method's own state across rounds

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


def _combination(
    weights: dict[str, float], fade_after: dict[str, int | None], **options: Any
) -> Callable[[State], np.ndarray]:
    def pick(state: State) -> np.ndarray:
        pool = _pool(state)
        result = prioritize(
            pool, weights, rng=state.rng, batch_size=BATCH, fade_after=fade_after, **options
        )
        return result.order[:BATCH]

    return pick


def _audited(pick: Callable[[State], np.ndarray]) -> Callable[[State], np.ndarray]:
    """``pick`` with the audit share of every push: uniform draws first, then its own picks."""

    def audited(state: State) -> np.ndarray:
        unlabeled = np.flatnonzero(state.labels < 0)
        audit = draw_audit(unlabeled, audit_count(BATCH, AUDIT_SHARE), rng=state.rng)
        own = [int(i) for i in pick(state) if i not in set(audit.tolist())]
        rest = [int(i) for i in state.rng.permutation(unlabeled) if i not in set(audit.tolist())]
        filler = [i for i in rest if i not in set(own)]  # when its picks met the audit items
        return np.asarray([*audit, *(own + filler)[: BATCH - audit.shape[0]]], dtype=np.int64)

    return audited


def _adaptive(state: State) -> np.ndarray:
    """The cycle's selection: audit share + the bandit over the arms (``strategies.bandit``)."""
    mem = state.memory
    if "proxy" not in mem:
        mem.update(
            proxy=proxy_features(state.X, rng=state.rng),
            rewards=[],
            audit=[],
            checks=[],
            pending={},
        )
    previous = mem.pop("picks", None)
    if previous is not None:  # the annotator labeled the whole previous batch
        rows, arms = previous
        pending: dict[str, list[int]] = mem["pending"]
        for row, arm in zip(rows, arms, strict=True):
            pending.setdefault(arm, []).append(int(row))
            if arm == AUDIT:
                mem["audit"].append(int(row))
        rewards, consumed = judge_pending(
            mem["proxy"],
            state.labels,
            pending,
            np.asarray(mem["audit"], dtype=np.int64),
            cycle=len(mem["checks"]),
            n_classes=state.n_classes,
        )
        mem["rewards"] += rewards
        for arm in consumed:
            pending.pop(arm, None)
    pool = _pool(state)
    combined = prioritize(
        pool, DEFAULT_WEIGHTS, rng=state.rng, batch_size=BATCH, fade_after=DEFAULT_FADE
    ).order
    built, allocation = build_queue(
        pool,
        combined,
        mem["rewards"],
        rng=state.rng,
        batch_size=BATCH,
        audit_share=AUDIT_SHARE,
        adaptive=True,
    )
    chosen, arms = built.order[:BATCH], built.arms[:BATCH]
    mem["picks"] = (chosen, arms)
    mem["checks"].append(_audit_check(state, chosen, arms))
    mem.setdefault("shares", []).append(dict(allocation.shares))
    return chosen


def _audit_check(state: State, chosen: np.ndarray, arms: tuple[str, ...]) -> dict[str, Any]:
    """This round's audit predictions (before labels) and whether the estimates cover the truth.

    Prequential: the newest ``AUDIT_WINDOW`` audit outcomes against the mean accuracy, on the
    unlabeled pool they were drawn from (true classes), of the models that made them: the
    quantity the audit estimates. The strategies take the hard items out of that pool, so it
    drifts from the test split; ``prequential vs test split`` shows the same estimate against the
    test accuracy of the same models. Cross-fitted: the audit items labeled so far, each predicted
    by a model fit without its fold, against the current model's test accuracy.
    """
    mem, check = state.memory, {}
    outcomes = mem.setdefault("outcomes", [])
    if state.model is not None and state.y is not None:
        audit = chosen[np.asarray(arms) == AUDIT]
        hits = state.model.predict(state.X[audit]) == state.y[audit]
        pool = np.flatnonzero(state.labels < 0)
        pool_accuracy = float(np.mean(state.model.predict(state.X[pool]) == state.y[pool]))
        outcomes += [(bool(h), pool_accuracy, state.test_accuracy) for h in hits]
    recent = outcomes[-AUDIT_WINDOW:]
    if len(recent) >= AUDIT_MIN:
        est = prequential_accuracy(np.array([h for h, _, _ in recent]))
        truth = float(np.mean([a for _, a, _ in recent]))
        check["prequential"] = est.low <= truth <= est.high
        on_test = float(np.mean([t for _, _, t in recent]))
        check["prequential vs test split"] = est.low <= on_test <= est.high
    audit_rows = np.asarray(mem.get("audit", []), dtype=np.int64)
    if state.model is not None and audit_rows.shape[0] >= AUDIT_MIN:
        est = prequential_accuracy(_crossfit_hits(state, audit_rows))
        check["crossfit"] = est.low <= state.test_accuracy <= est.high
    return check


def _crossfit_hits(state: State, audit: np.ndarray, folds: int = 5) -> np.ndarray:
    """Out-of-fold predictions of the labeled audit items (each fold fit without its items)."""
    labeled = state.labels >= 0
    hits = np.zeros(audit.shape[0], dtype=bool)
    for part in np.array_split(np.arange(audit.shape[0]), folds):
        train = labeled.copy()
        train[audit[part]] = False
        if part.shape[0] == 0 or np.unique(state.labels[train]).shape[0] < 2:
            continue
        model = _fit(state.X[train], state.labels[train])
        hits[part] = model.predict(state.X[audit[part]]) == state.labels[audit[part]]
    return hits


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


def _weights_label(weights: dict[str, float], fade_after: dict[str, int | None]) -> str:
    def one(name: str, value: float) -> str:
        after = fade_after.get(name)
        return f"{name} {value:g}" + (f" fading after {after}" if after is not None else "")

    return ", ".join(one(name, value) for name, value in weights.items())


def methods() -> dict[str, Callable[[State], np.ndarray]]:
    """Every contender, baselines first."""
    table: dict[str, Callable[[State], np.ndarray]] = {"random": _ours("random")}
    for query in ("uncertainty", "margin", "entropy", "qbc"):
        table[f"modAL {query}"] = _modal(query)
    for name in MODEL_SIGNALS + COMMITTEE_SIGNALS + EMBEDDING_SIGNALS:
        table[name] = _ours(name)
    default = _weights_label(DEFAULT_WEIGHTS, DEFAULT_FADE)
    table[f"ours: default ({default})"] = _combination(DEFAULT_WEIGHTS, DEFAULT_FADE)
    table[
        "ours: adaptive (audit 10 % + bandit over random, margin, entropy, typiclust, default)"
    ] = _adaptive
    for name in FIXED:
        row = f"ours: default ({default})" if name == "default" else name
        table[f"{name} + audit"] = _audited(table[row])
    table["  ablation: default, no fading"] = _combination(DEFAULT_WEIGHTS, {})
    table["  ablation: default, no batch diversity"] = _combination(
        DEFAULT_WEIGHTS, DEFAULT_FADE, diversity="none"
    )
    table["  ablation: default, no cold start"] = _combination(
        DEFAULT_WEIGHTS, DEFAULT_FADE, cold_start_labels=0
    )
    return table


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def tile_images(tile: int = 32, per_photo: int = TILES_PER_PHOTO) -> tuple[list[bytes], np.ndarray]:
    """Grayscale tiles, ``per_photo`` from each of :data:`TILE_PHOTOS`; the label is the photo."""
    from skimage import data
    from skimage.color import rgb2gray

    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, name in enumerate(TILE_PHOTOS):
        photo = getattr(data, name)()
        if photo.ndim == 3:  # grayscale everywhere, so colour alone does not name the photo
            photo = (rgb2gray(photo[..., :3]) * 255).astype(np.uint8)
        rows, cols = photo.shape[0] // tile, photo.shape[1] // tile
        for cell in rng.choice(rows * cols, size=per_photo, replace=False):
            top, left = divmod(int(cell), cols)
            images.append(
                _png(photo[top * tile : (top + 1) * tile, left * tile : (left + 1) * tile])
            )
            labels.append(label)
    return images, np.asarray(labels)


def _images(dataset: str) -> tuple[list[bytes], np.ndarray]:
    if dataset in GENERATED:
        made = generate(dataset)
        return list(made.images), made.y
    if dataset == "digits-emb":
        from backend.simulate.sets import digit_images

        rendered = list(digit_images(1797, size=64, seed=0))
        return [png for _, png, _ in rendered], np.array([digit for *_, digit in rendered])
    if dataset == "textures":
        from bench_model import textures_set

        textures = textures_set(None)
        return textures.images, textures.labels
    return tile_images()


def embed(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1280) EfficientNet-Lite0 embeddings at :data:`EMBED_SIZE` px and (n,) labels."""
    from backend.model import EmbeddingCache, build_backbone, featurize
    from backend.settings import ModelSettings

    images, labels = _images(dataset)
    backbone = build_backbone(ModelSettings(image_size=EMBED_SIZE))
    items = [(i, (lambda png=png: png)) for i, png in enumerate(images)]
    started = time.perf_counter()
    result = featurize(items, backbone, EmbeddingCache(CACHE), batch_size=32, log_every=0)
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} images failed: {result.failures}")
    seconds = time.perf_counter() - started
    print(f"{dataset}: {len(items)} embeddings in {seconds:.1f} s", file=sys.stderr)
    return np.stack([result.embeddings[i] for i in range(len(items))]), labels


def features(dataset: str) -> Path:
    """Write the dataset's (X, y) where the worker processes can read it; returns the path."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        X, y = digits.data / 16.0, digits.target
    else:
        X, y = embed(dataset)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{dataset}-features.npz"
    np.savez(path, X=X.astype(np.float64), y=y)
    return path


@dataclass(frozen=True)
class Result:
    """One race's outcome.

    Attributes:
        curve: labels -> test accuracy.
        full: test accuracy of a model fit on the whole pool.
        rare: labels of the dataset's rarest class among the first 100.
        checks: per round, whether each audit estimate's interval covered the truth.
        shares: per round, the arms' shares (adaptive only).
    """

    method: str
    seed: int
    curve: dict[int, float]
    full: float
    rare: int
    checks: tuple[dict[str, bool], ...] = ()
    shares: tuple[dict[str, float], ...] = ()


def race(task: Task) -> Result:
    """Run one method on one seed: its learning curve, the full accuracy, the audit checks."""
    # One process per CPU already: BLAS and the scoring kernels stay on one thread each.
    with threadpool_limits(1), threads(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with np.load(task.data) as data:
            X_all, y_all = data["X"], data["y"]
        X, X_test, y, y_test = train_test_split(
            X_all, y_all, test_size=0.25, stratify=y_all, random_state=task.seed
        )
        if X.shape[1] > PCA_DIMS:  # fitted on the unlabeled pool only, never on the test set
            pca = PCA(PCA_DIMS, random_state=task.seed).fit(X)
            X, X_test = pca.transform(X), pca.transform(X_test)
        full = _fit(X, y).score(X_test, y_test)
        rng = np.random.default_rng(task.seed)
        n_classes = int(y_all.max()) + 1
        rarest = int(np.argmin(np.bincount(y_all, minlength=n_classes)))
        state = State(X=X, labels=np.full(len(y), -1), n_classes=n_classes, rng=rng, y=y)
        pick = methods()[task.method]
        curve: dict[int, float] = {}
        rare = 0
        while (n_labeled := int((state.labels >= 0).sum())) < task.budget:
            chosen = pick(state)
            rare += int(np.sum(y[chosen][: max(0, 100 - n_labeled)] == rarest))
            state.labels[chosen] = y[chosen]
            n_labeled += len(chosen)
            known = state.labels >= 0
            if np.unique(state.labels[known]).shape[0] >= 2:
                state.model = _fit(X[known], state.labels[known])
                curve[n_labeled] = state.test_accuracy = state.model.score(X_test, y_test)
            else:  # one class: every test item gets it
                curve[n_labeled] = float(np.mean(y_test == state.labels[known][0]))
        checks = tuple(state.memory.get("checks", ()))
        shares = tuple(state.memory.get("shares", ()))
        return Result(task.method, task.seed, curve, full, rare, checks, shares)


def _reach(results: list[Result]) -> list[float]:
    needed = []
    for r in results:
        hits = [n for n, acc in sorted(r.curve.items()) if acc >= 0.95 * r.full]
        needed.append(hits[0] if hits else np.inf)
    return needed


def summarize(results: list[Result], budget: int, dataset: str) -> None:
    """Aggregate over seeds and print one table: mean and 10th percentile per label count."""
    names = list(dict.fromkeys(r.method for r in results))
    rows = []
    for name in names:
        runs = [r for r in results if r.method == name]
        cells = []
        for c in CHECKPOINTS:
            accs = np.array([r.curve.get(c, np.nan) for r in runs])
            cells.append(f"{np.nanmean(accs):.3f} / {np.nanpercentile(accs, 10):.3f}")
        needed = _reach(runs)
        reached = f"{np.mean(needed):.0f}" if np.isfinite(needed).all() else f">{budget}"
        spread = f"{np.std(needed):.0f}" if np.isfinite(needed).all() else "-"
        rare = np.mean([r.rare for r in runs])
        rows.append([name, *cells, reached, spread, f"{rare:.1f}"])
    full = np.mean([r.full for r in results if r.method == names[0]])
    features = (
        "raw pixels"
        if dataset == "digits"
        else f"EfficientNet-Lite0 {EMBED_SIZE} px, PCA {PCA_DIMS} on the pool"
    )
    title = (
        f"Label efficiency, {dataset} ({features}), LogisticRegression, batch {BATCH}, "
        f"{len({r.seed for r in results})} seeds, full-data accuracy {full:.3f} ({machine()}); "
        "cells: mean / 10th percentile over seeds"
    )
    headers = [
        "method",
        *(f"acc@{c}" for c in CHECKPOINTS),
        "labels to 95% of full",
        "std",
        "rarest class in first 100",
    ]
    print_table(headers, rows, title=title)
    _print_audit(results)


def _print_audit(results: list[Result]) -> None:
    """How often the audit estimates' 90 % intervals covered the truth, and the mean shares."""
    checked = [r for r in results if r.checks]
    if not checked:
        return
    for kind in ("prequential", "prequential vs test split", "crossfit"):
        flags = [c[kind] for r in checked for c in r.checks if kind in c]
        if flags:
            print(
                f"audit {kind}: 90 % interval covered the truth in {np.mean(flags):.1%} "
                f"of {len(flags)} rounds"
            )
    arms = sorted({a for r in checked for s in r.shares for a in s})
    for start, stop in ((0, 5), (5, 15), (15, None)):
        means = {
            a: np.mean([s.get(a, 0.0) for r in checked for s in r.shares[start:stop]]) for a in arms
        }
        span = f"rounds {start + 1}-{stop}" if stop else f"rounds {start + 1}+"
        print(f"adaptive shares, {span}: " + ", ".join(f"{a} {v:.2f}" for a, v in means.items()))


def _chosen(name: str, wanted: list[str] | None) -> bool:
    """Whether ``--methods`` keeps the row ``name`` ("default" keeps "ours: default (...)")."""
    if wanted is not None and "contenders" in wanted:
        wanted = [*wanted, *CONTENDERS]
    return wanted is None or any(name == w or name.startswith(f"ours: {w} (") for w in wanted)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="budget 300, 3 seeds, one dataset")
    parser.add_argument("--seeds", type=int, help=f"seeds 0..N-1 ({len(SEEDS)}; quick: 3)")
    parser.add_argument("--budget", type=int, help="labels per race (500; quick: 300)")
    parser.add_argument("--workers", type=int, default=None, help="processes (all CPUs)")
    parser.add_argument(
        "--methods",
        nargs="+",
        help='only these rows (e.g. random "modAL margin" margin default); all when omitted',
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    seeds = tuple(range(args.seeds)) if args.seeds else SEEDS[: 3 if args.quick else len(SEEDS)]
    datasets = args.dataset[:1] if args.quick else args.dataset
    budget = args.budget or (300 if args.quick else 500)
    for dataset in datasets:
        data = features(dataset)
        names = [name for name in methods() if _chosen(name, args.methods)]
        if not names:
            raise SystemExit(f"--methods {args.methods} names no row; rows: {list(methods())}")
        tasks = [Task(name, seed, budget, data) for name in names for seed in seeds]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(race, tasks, chunksize=4))
        summarize(results, budget, dataset)


if __name__ == "__main__":
    main()
