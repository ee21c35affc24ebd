"""The cycle's score stage at 10,000 and 100,000 tasks: the pool built from trained heads, every
signal, the queue, the audit share and the adaptive selection over its arms.

Synthetic 1280-d embeddings (EfficientNet-Lite0's size, non-negative like a ReLU's output) of 10
classes with 3 % labeled, default settings. Heads are trained once per size (not timed). Each row
runs the stage twice, as two cycles do: the first fits the project's k-means clusters, the second
reuses them (:mod:`backend.loop.clusters`). Seconds (wall and process CPU) per call of
``build_pool``, ``score_stage`` and ``select_stage`` (the cycle's ``score`` record is their sum).

The embeddings come as featurize hands a warm cycle's: one matrix in task order
(:class:`backend.model.featurize.Embeddings`). Baselines in the same run: the BLAS libraries' own
thread count instead of ``model.blas_threads`` (1), the embeddings as one vector per task
(stacked into the pool's matrix, as before the table), and k-means seeded three times on every
item (what ran before seeding on a sample of :data:`strategies.coverage.SEED_SAMPLE`).

    python benchmarks/bench_score_stage.py [--sizes 10000,100000] [--threads 2] [--only-now]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.labelstudio.config import LabelConfig
from backend.logs import quiet_third_party
from backend.loop.clusters import project_clusters
from backend.loop.contract import Snapshot, Trained
from backend.loop.fit import fit
from backend.loop.score import build_pool, score_stage
from backend.loop.selection import select_stage
from backend.loop.targets import consensus_targets
from backend.model.featurize import Embeddings
from backend.model.train import blas_threads
from backend.settings import Settings, load_settings
from backend.store.db import Store
from backend.store.models import Annotation, Task
from benchmarks._common import print_table
from strategies import coverage
from strategies.base import Basis

DIM, CLASSES, LABELED = 1280, 10, 0.03


def _problem(n: int, seed: int = 0) -> tuple[Snapshot, Embeddings]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, n)
    x = np.maximum(centers[y] * 0.3 + rng.normal(size=(n, DIM)).astype(np.float32), 0.0)
    names = tuple(f"c{i}" for i in range(CLASSES))
    cfg = LabelConfig("label", "image", "image", names, multiple=False)
    labeled = rng.choice(n, size=round(LABELED * n), replace=False)
    annotations = [
        Annotation(id=int(i) + 1, task_id=int(i) + 1, annotator=1, labels=[names[y[i]]])
        for i in sorted(labeled)
    ]
    tasks = [
        Task(id=i + 1, image_ref=f"bench://{i + 1}", data={"image": f"bench://{i + 1}"})
        for i in range(n)
    ]
    snap = Snapshot(cfg, tasks, annotations, consensus_targets(annotations, cfg))
    return snap, Embeddings(np.arange(1, n + 1, dtype=np.int64), x)  # as featurize hands them


@contextlib.contextmanager
def _seeded_on_every_item(on: bool) -> Iterator[None]:
    before = coverage.SEED_SAMPLE
    if on:
        coverage.SEED_SAMPLE = 10**12
    try:
        yield
    finally:
        coverage.SEED_SAMPLE = before


def _stage(
    settings: Settings,
    store: Store,
    snap: Snapshot,
    embeddings: Mapping[int, np.ndarray],
    trained: Trained,
) -> tuple[list[float], list[float]]:
    """(wall, cpu) seconds of build_pool, score_stage and select_stage, as the cycle calls them."""
    wall, cpu = [], []

    def clusters_for(task_ids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, Basis | None]:
        found = project_clusters(settings, 1, task_ids, x)
        return found.labels, found.basis

    def timed(call, *args):  # type: ignore[no-untyped-def]
        started, cpu_started = time.perf_counter(), time.process_time()
        out = call(*args)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        return out

    arrays = timed(build_pool, snap, embeddings, trained, None, clusters_for)
    scored = timed(score_stage, settings, arrays)
    timed(select_stage, settings, store, 1, snap, scored)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads of the baseline")
    parser.add_argument("--only-now", action="store_true", help="skip the baselines")
    args = parser.parse_args()
    quiet_third_party()
    logging.getLogger("backend").setLevel(logging.WARNING)
    rows = []
    for n in (int(size) for size in args.sizes.split(",")):
        snap, embeddings = _problem(n)
        with tempfile.TemporaryDirectory() as scratch:
            base = load_settings(None)
            store_settings = base.store.model_copy(update={"data_dir": Path(scratch)})
            settings = base.model_copy(update={"store": store_settings})
            store = Store(f"sqlite:///{Path(scratch) / 'bench.db'}")
            store.upgrade()
            try:
                with blas_threads(1):
                    model, used, _ = fit(settings, snap.cfg, snap.targets, embeddings, "bench")
                trained = Trained(model, used, "bench")
                as_dict = {int(t): embeddings[int(t)] for t in embeddings.ids}
                variants = [
                    ("now: blas_threads 1, k-means seeded on a sample", 1, False, embeddings),
                    (f"baseline: BLAS default ({args.threads} threads)", args.threads, False,
                     embeddings),
                    ("baseline: embeddings one vector per task (stacked)", 1, False, as_dict),
                ]  # fmt: skip
                if n <= coverage.FULL_KMEANS_MAX:  # above, mini-batch k-means seeded as before
                    variants.append(
                        ("baseline: k-means seeded 3x on every item", 1, True, embeddings)
                    )
                if args.only_now:
                    variants = variants[:1]
                for name, n_threads, every_item, vectors in variants:
                    (Path(scratch) / "clusters").mkdir(exist_ok=True)
                    for stored in (Path(scratch) / "clusters").iterdir():
                        stored.unlink()  # the first cycle of each variant fits its clusters
                    with blas_threads(n_threads), _seeded_on_every_item(every_item):
                        for cycle in ("fit clusters", "reuse clusters"):
                            wall, cpu = _stage(settings, store, snap, vectors, trained)
                            rows.append(
                                [f"{n:,}", name, cycle]
                                + [f"{w:.2f} ({c:.2f})" for w, c in zip(wall, cpu, strict=True)]
                                + [f"{sum(wall):.2f} ({sum(cpu):.2f})"]
                            )
            finally:
                store.dispose()
    print_table(
        ["tasks", "variant", "cycle", "build_pool", "score_stage", "select_stage", "score total"],
        rows,
        title=(
            f"score stage, {DIM}-d embeddings, {CLASSES} classes, {LABELED:.0%} labeled, default "
            f"settings; seconds wall (CPU) ({os.cpu_count()} CPUs)"
        ),
    )
    print("\ngoal: score stage of a 100,000-task cycle < 1 s on 2 cores")


if __name__ == "__main__":
    main()
