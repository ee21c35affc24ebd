"""A simulated labeling loop on an already-labeled dataset, through the real cycle code.

No Label Studio and no store: the simulated annotator answers with the true label (or, for a planted
share, a wrong one), and every round runs what a cycle runs: :func:`backend.loop.fit.fit` (the
Lightning heads), :func:`backend.loop.score.build_pool` and :func:`backend.loop.score.score_stage`
(the strategies), :func:`backend.loop.queue.queue_items` (the queue exactly as Label Studio serves
it, lowest position first) and :func:`backend.loop.review.suspects` (the label-error review
ranking). Embeddings come through the embedding cache under ``store.data_dir``, once per dataset.

Each seed draws its own stratified test split and its own planted errors; every strategy of a seed
meets the same split and the same annotator. Each strategy can also run under Label Studio's own
cluster serving (``strategy.push_clusters``, :func:`ls_cluster_picks`) instead of our order.

What annotators get is what is measured: every strategy chooses its own first batch (there is no
shared random seed set), every queue carries the audit share and, for ``adaptive``, the bandit's
arms, exactly as :func:`backend.loop.selection.select_stage` builds it, with its picks recorded in a
throwaway store as a cycle records them. Accuracy is on the held-out split against the data set's
labels, which are the true classes for the built-in and generated sets; for a folder they are the
given labels (:attr:`Dataset.true_labels` is False and the CLI warns).
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from backend.labelstudio.config import LabelConfig
from backend.loop.contract import Scored, Snapshot, Trained
from backend.loop.embed import embed_items
from backend.loop.fit import fit
from backend.loop.push import QueueItem
from backend.loop.queue import queue_items
from backend.loop.review import suspects
from backend.loop.score import build_pool, score_stage
from backend.loop.selection import record_picks, select_stage
from backend.loop.targets import NotEnoughLabels, consensus_targets
from backend.settings import Settings, StrategySettings
from backend.simulate.sets import GENERATED, digit_images, generate
from backend.store.db import Store
from backend.store.models import Annotation, Task

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TEXTURES = ("brick", "grass", "gravel")
#: The simulated annotator's id on every annotation it makes.
ANNOTATOR = 1
#: How Label Studio serves the queue to the annotator: ``ours`` = ascending score, the order our
#: strategies chose; ``ls-clusters`` = with ``strategy.push_clusters`` on, Label Studio's own
#: cluster rule (see :func:`ls_cluster_picks`).
Serve = Literal["ours", "ls-clusters"]
SERVES: tuple[Serve, ...] = get_args(Serve)
#: The row that runs the configured weights under ``strategy.selection: adaptive``.
ADAPTIVE = "adaptive"


class DatasetError(ValueError):
    """A dataset cannot be loaded (unknown name, bad folder layout, missing package); says why."""


@dataclass(frozen=True)
class Dataset:
    """Images with their true classes.

    Attributes:
        name: what the user asked for (``digits``, ``textures`` or a folder path).
        classes: class names, in label-index order.
        images: one callable per item returning its image bytes.
        y: (n,) class index of each item.
        true_labels: ``y`` are the true classes (built-in and generated sets), not only the
            labels someone gave (a folder).
    """

    name: str
    classes: tuple[str, ...]
    images: tuple[Callable[[], bytes], ...]
    y: NDArray[np.int64]
    true_labels: bool = True


@dataclass(frozen=True)
class Point:
    """The state after one round: labels so far, test accuracy, label errors surfaced."""

    labels: int
    accuracy: float
    planted: int  # planted (wrong) labels among the labels so far
    surfaced: int  # of those, how many the review view holds (its top ``review_max_flags``)
    phase: str  # the queue's phase when the round was scored: "cold_start" or "model"
    flagged: int = 0  # labels the review view holds, planted or not


@dataclass(frozen=True)
class Problem:
    """One seed's split and annotator, shared by every strategy of that seed.

    Attributes:
        cfg: a single-choice label config over the dataset's classes.
        embeddings: task id -> (d,) embedding of every pool (non-test) item.
        answers: task id -> the class index the simulated annotator gives.
        planted: task ids whose answer is wrong.
        x_test: (m, d) test embeddings; y_test (m,) their true classes.
    """

    cfg: LabelConfig
    embeddings: dict[int, NDArray[np.floating[Any]]]
    answers: dict[int, int]
    planted: frozenset[int]
    x_test: NDArray[np.floating[Any]]
    y_test: NDArray[np.int64]


def _png(pixels: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _digits(limit: int | None) -> Dataset:
    rendered = list(digit_images(limit or 1797))
    return Dataset(
        "digits",
        tuple(str(d) for d in range(10)),
        tuple(_constant(png) for _, png, _ in rendered),
        np.array([digit for _, _, digit in rendered], dtype=np.int64),
    )


def _textures(limit: int | None, tile: int = 64) -> Dataset:
    try:
        from skimage import data
    except ImportError:
        raise DatasetError(
            "the textures dataset needs scikit-image (pip install scikit-image)"
        ) from None
    images: list[Callable[[], bytes]] = []
    y: list[int] = []
    for label, name in enumerate(TEXTURES):
        photo = np.asarray(getattr(data, name)())
        for top in range(0, photo.shape[0] - tile + 1, tile):
            for left in range(0, photo.shape[1] - tile + 1, tile):
                images.append(_constant(_png(photo[top : top + tile, left : left + tile])))
                y.append(label)
    keep = np.random.default_rng(0).permutation(len(y))[: limit or len(y)]
    return Dataset(
        "textures", TEXTURES, tuple(images[i] for i in keep), np.asarray(y, dtype=np.int64)[keep]
    )


def _folder(root: Path, limit: int | None) -> Dataset:
    if not root.is_dir():
        raise DatasetError(f"{root} is not digits, textures or a folder of class folders")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(classes) < 2 or not files:
        raise DatasetError(f"{root} must hold at least 2 class folders with images in them")
    keep = np.random.default_rng(0).permutation(len(files))[: limit or len(files)]
    return Dataset(
        str(root),
        classes,
        tuple(files[i][0].read_bytes for i in keep),
        np.array([files[i][1] for i in keep], dtype=np.int64),
        true_labels=False,
    )


def _generated(name: str, limit: int | None) -> Dataset:
    made = generate(name, n=limit)
    return Dataset(name, made.classes, tuple(_constant(png) for png in made.images), made.y)


def load_dataset(spec: str, *, limit: int | None = None) -> Dataset:
    """``digits``, ``textures``, a generated set (``nuisance``, ``rare``:
    :mod:`backend.simulate.sets`) or a folder laid out as ``<root>/<class>/<images>``.

    Args:
        spec: the dataset name or folder.
        limit: keep at most this many items (a fixed random subset).

    Raises:
        DatasetError: the folder is missing or not laid out by class, or a package is missing.
    """
    if spec == "digits":
        return _digits(limit)
    if spec == "textures":
        return _textures(limit)
    if spec in GENERATED:
        return _generated(spec, limit)
    return _folder(Path(spec), limit)


def embed_dataset(
    settings: Settings, dataset: Dataset
) -> tuple[NDArray[np.floating[Any]], NDArray[np.int64]]:
    """(n, d) embeddings of the images that could be embedded and (n,) their true classes.

    Computed once per dataset with the configured backbone, through the embedding cache.
    """
    result, _ = embed_items(settings, list(enumerate(dataset.images)))
    if result.failures:
        log.warning("%d images could not be embedded and are left out", len(result.failures))
    kept = np.array(sorted(result.embeddings), dtype=np.int64)
    if not len(kept):
        raise DatasetError(f"no image of {dataset.name} could be embedded")
    return np.stack([result.embeddings[int(i)] for i in kept]), dataset.y[kept]


def make_problem(
    x: NDArray[np.floating[Any]],
    y: NDArray[np.int64],
    classes: Sequence[str],
    *,
    seed: int,
    test_size: float,
    noise: float,
) -> Problem:
    """Split ``(x, y)`` into pool and test (stratified) and plant ``noise`` wrong answers.

    Args:
        x: (n, d) embeddings; y: (n,) true classes.
        classes: the class names.
        seed: draws the split and the planted errors.
        test_size: share of items held out for testing.
        noise: share of pool items whose answer is a uniformly drawn wrong class.
    """
    from sklearn.model_selection import train_test_split

    pool, test = train_test_split(
        np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed
    )
    rng = np.random.default_rng(seed)
    answers = y[pool].copy()
    flipped = rng.choice(len(pool), size=round(noise * len(pool)), replace=False)
    answers[flipped] = (answers[flipped] + rng.integers(1, len(classes), len(flipped))) % len(
        classes
    )
    ids = [int(i) + 1 for i in pool]  # task ids as Label Studio's: positive, unique
    labels = tuple(classes)
    return Problem(
        cfg=LabelConfig("label", "image", "image", labels, multiple=False),
        embeddings={t: x[i] for t, i in zip(ids, pool, strict=True)},
        answers={t: int(a) for t, a in zip(ids, answers, strict=True)},
        planted=frozenset(ids[int(i)] for i in flipped),
        x_test=x[test],
        y_test=y[test],
    )


def strategy_settings(
    settings: Settings,
    weights: Mapping[str, float],
    *,
    seed: int,
    batch_size: int,
    selection: str = "fixed",
) -> Settings:
    """``settings`` with these strategy weights (replacing, not merged), batch size, selection
    mode (a named strategy runs ``fixed``; the ``adaptive`` row runs the bandit) and seed.

    Raises:
        pydantic.ValidationError: an unknown signal, a negative weight or a bad batch size.
    """
    strategy = StrategySettings.model_validate(
        {
            **settings.strategy.model_dump(),
            "weights": dict(weights),
            "batch_size": batch_size,
            "selection": selection,
        }
    )
    model = settings.model.model_copy(update={"seed": seed})
    return settings.model_copy(update={"strategy": strategy, "model": model})


def _snapshot(problem: Problem, labeled: Mapping[int, int]) -> Snapshot:
    """What the store would hold: one annotation per labeled task, by the one annotator."""
    names = problem.cfg.labels
    annotations = [
        Annotation(id=task, task_id=task, annotator=ANNOTATOR, labels=[names[label]])
        for task, label in sorted(labeled.items())
    ]
    tasks = [Task(id=task, image_ref=f"sim://{task}") for task in sorted(problem.embeddings)]
    return Snapshot(problem.cfg, tasks, annotations, consensus_targets(annotations, problem.cfg))


def _train(settings: Settings, snap: Snapshot, problem: Problem) -> Trained | None:
    """The cycle's train stage without writing a checkpoint; None while labels are too few."""
    try:
        model, used, _ = fit(settings, snap.cfg, snap.targets, problem.embeddings, "simulated")
    except NotEnoughLabels:
        return None
    return Trained(model, used, "simulated")


def _accuracy(problem: Problem, snap: Snapshot, trained: Trained | None) -> float:
    if trained is not None:
        predicted = trained.model.predict_proba(problem.x_test).argmax(axis=1)
    else:  # no model yet: the best a labeler could do is answer the most common label
        predicted = np.full(len(problem.y_test), np.bincount(snap.targets.y).argmax())
    return float(np.mean(predicted == problem.y_test))


def _measure(
    settings: Settings, problem: Problem, snap: Snapshot, scored: Scored, trained: Trained | None
) -> Point:
    top = suspects(settings, snap, scored, "label_error", set())
    flagged = {s.task_id for s in top[: settings.strategy.review_max_flags]}
    labeled = set(snap.targets.task_ids.tolist())
    return Point(
        labels=len(labeled),
        accuracy=_accuracy(problem, snap, trained),
        planted=len(problem.planted & labeled),
        surfaced=len(problem.planted & flagged),
        phase=scored.priority.phase,
        flagged=len(flagged),
    )


def ls_cluster_picks(
    scores: NDArray[np.float64],
    clusters: NDArray[np.int64],
    size: int,
    solved: Mapping[int, int] | None = None,
) -> list[int]:
    """The next ``size`` tasks one annotator is served when predictions carry a ``cluster``.

    Label Studio 1.23's uncertainty sampling (``projects/functions/next_task.py``,
    ``_try_uncertainty_sampling``) counts, per cluster, the tasks this annotator has labeled, and
    serves the unlabeled task first in ``(that count for its cluster, prediction score)``
    ascending, re-evaluated after every annotation: round-robin over the least-labeled clusters,
    lowest score first inside one. A labeled task's cluster is the largest ``cluster`` among its
    remaining predictions; since :func:`backend.loop.push.prune_predictions` deletes our older
    versions after every push and the queue holds unlabeled tasks only, tasks labeled before the
    latest push have no prediction left and count for no cluster, so the counts start again from
    ``solved`` (empty after a push) every cycle. With one annotator the first task is served (with
    more, Label Studio picks at random among the first few).

    Args:
        scores: (n,) prediction score of each unlabeled task (our queue position).
        clusters: (n,) cluster id of each.
        size: how many tasks the annotator labels.
        solved: cluster id -> tasks of it this annotator has labeled since the latest push.

    Returns:
        Indices into ``scores``, in the order served.
    """
    ids, dense = np.unique(clusters, return_inverse=True)
    counts = np.array([(solved or {}).get(int(c), 0) for c in ids], dtype=np.int64)
    open_ = np.ones(len(scores), dtype=bool)
    picks: list[int] = []
    for _ in range(min(size, len(scores))):
        load = np.where(open_, counts[dense], np.iinfo(np.int64).max)
        pick = int(np.argmin(np.where(load == load.min(), scores, np.inf)))
        picks.append(pick)
        open_[pick] = False
        counts[dense[pick]] += 1
    return picks


def _next_batch(
    settings: Settings, queue: Sequence[QueueItem], size: int, serve: Serve
) -> list[int]:
    """The next ``size`` tasks the annotator is served: our queue order (lowest score first),
    or Label Studio's cluster rule over it (``ls-clusters``, clusters pushed)."""
    queue = sorted(queue, key=lambda item: item.position)
    if serve == "ours":
        return [item.task_id for item in queue[:size]]
    scores = np.array([item.position for item in queue], dtype=np.float64)
    clusters = np.array([item.cluster for item in queue], dtype=np.int64)
    return [queue[i].task_id for i in ls_cluster_picks(scores, clusters, size)]


def run_curve(
    settings: Settings,
    problem: Problem,
    *,
    budget: int,
    serve: Serve = "ours",
    store: Store,
    project_id: int = 1,
) -> list[Point]:
    """Label from zero up to ``budget`` labels in batches; one point per round.

    Each round is a cycle: train on the labels so far, score the pool, build the queue with the
    audit share (and the bandit, when adaptive), measure, then the annotator labels the next
    ``settings.strategy.batch_size`` items as ``serve`` serves them. The picks are recorded in
    ``store`` under ``project_id`` (one per curve), round numbers standing for cycle ids.
    """
    if serve == "ls-clusters":
        strategy = settings.strategy.model_copy(update={"push_clusters": True})
        settings = settings.model_copy(update={"strategy": strategy})
    batch_size = settings.strategy.batch_size
    labeled: dict[int, int] = {}
    snap, trained, points = _snapshot(problem, labeled), None, []
    for round_ in range(1, budget + 2):
        scored = score_stage(settings, build_pool(snap, problem.embeddings, trained))
        chosen = select_stage(settings, store, project_id, snap, scored)
        scored = replace(scored, priority=chosen.priority)
        if labeled:
            points.append(_measure(settings, problem, snap, scored, trained))
        size = min(batch_size, budget - len(labeled))
        queue = queue_items(settings, scored, trained)
        batch = _next_batch(settings, queue, size, serve) if size > 0 else []
        if not batch:
            break
        record_picks(store, project_id, round_, "simulated", queue, chosen)
        labeled.update((task, problem.answers[task]) for task in batch)
        snap = _snapshot(problem, labeled)
        trained = _train(settings, snap, problem)
    return points


@dataclass(frozen=True)
class Curve:
    """One strategy's learning curve on one seed, under one serving rule.

    ``strategy`` names the row: the strategy's name, followed by `` [ls-clusters]`` under Label
    Studio's cluster serving.
    """

    strategy: str
    seed: int
    points: tuple[Point, ...]
    serve: Serve = "ours"


def row_name(strategy: str, serve: Serve) -> str:
    """``default`` under our order, ``default [ls-clusters]`` under Label Studio's cluster rule."""
    return strategy if serve == "ours" else f"{strategy} [{serve}]"


def simulate(
    settings: Settings,
    dataset: Dataset,
    strategies: Mapping[str, Mapping[str, float]],
    *,
    seeds: Sequence[int],
    budget: int,
    batch_size: int,
    noise: float = 0.0,
    test_size: float = 0.3,
    serves: Sequence[Serve] = ("ours",),
) -> list[Curve]:
    """Every strategy on every seed, from zero labels to ``budget``.

    Args:
        settings: the configured settings (backbone, model, strategy defaults, data_dir).
        dataset: the labeled images.
        strategies: name -> signal weights (names from :data:`strategies.REGISTRY`).
        seeds: one split, planted-error draw and training seed each.
        budget: labels per run; batch_size: labels per round.
        noise: share of wrong answers; test_size: share of items held out.
        serves: the serving rules to run each strategy under (see :data:`Serve`).
    """
    x, y = embed_dataset(settings, dataset)
    curves: list[Curve] = []
    with tempfile.TemporaryDirectory(prefix="labelloop-simulate-") as scratch:
        store = Store(f"sqlite:///{Path(scratch) / 'picks.db'}")
        store.upgrade()
        try:
            for seed in seeds:
                problem = make_problem(
                    x, y, dataset.classes, seed=seed, test_size=test_size, noise=noise
                )
                for name, weights in strategies.items():
                    mode = "adaptive" if name == ADAPTIVE else "fixed"
                    run = strategy_settings(
                        settings, weights, seed=seed, batch_size=batch_size, selection=mode
                    )
                    for serve in serves:
                        points = run_curve(
                            run, problem, budget=budget, serve=serve, store=store,
                            project_id=len(curves) + 1,
                        )  # fmt: skip
                        row = row_name(name, serve)
                        log.info("simulate: %s seed %d: %d rounds", row, seed, len(points))
                        curves.append(Curve(row, seed, tuple(points), serve))
        finally:
            store.dispose()
    return curves
