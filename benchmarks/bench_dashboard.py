"""Dashboard speed: compute the diagnosis (every section) and build the page, 10k and 100k items.

Synthetic embeddings (d=1280, like efficientnet_lite0) with 10 classes, 20% labeled, the newest
10% unlabeled (drift check), random out-of-sample probabilities, 1% planted near-duplicates, a
split and a source field, image statistics for every item; prints one row per size: compute
(k-means skipped: the cycle's clusters are passed, as in a real cycle), JSON size, page build time
and page size, then the map's projection alone (UMAP and PCA on the drawn items). One BLAS
thread.

The neighbour searches, new (the index of :mod:`strategies.neighbours`) against the old ones in
the same run: the diagnosis's near-duplicate pairs (old: every pair on 64 principal components,
confirmed on the full vectors) and the queue's near-copies of labeled items (old: every unlabeled
item against every labeled one on the full vectors; at 100k timed on a tenth of the unlabeled
items and scaled by ten). Recall is measured against exact brute force on the full vectors for a
sample of query items (every planted copy and 1,000 random items), on the benchmark's data and on
a harder set: low-rank embeddings whose planted copies sit at cosine 0.95-0.995, half of them
perturbed along the shared directions.

    python benchmarks/bench_dashboard.py [--quick]      # --quick: 1k and 10k items
"""

from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from _common import print_table  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from backend.diagnosis.compute import DiagnosisInputs, compute_diagnosis  # noqa: E402
from backend.diagnosis.duplicate_groups import near_pairs  # noqa: E402
from backend.diagnosis.page import Pages  # noqa: E402
from backend.diagnosis.projection import Method, project  # noqa: E402
from backend.diagnosis.schema import Diagnosis  # noqa: E402
from backend.diagnosis.view import with_links  # noqa: E402
from backend.logs import quiet_third_party  # noqa: E402
from backend.settings import DiagnosisSettings  # noqa: E402
from strategies.duplicates import centred_unit, near_copies_of_labeled  # noqa: E402
from strategies.neighbours import brute_force_pairs  # noqa: E402

THRESHOLD = DiagnosisSettings().near_duplicate_similarity


def synthetic(n: int, rng: np.random.Generator, d: int = 1280, c: int = 10) -> DiagnosisInputs:
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + 3 * np.eye(c, d)[y]
    labels = np.where(np.arange(n) < n // 5, y, -1).astype(np.int64)
    probs = rng.dirichlet(np.ones(c), n)
    probs[np.arange(n), y] += 2.0
    probs /= probs.sum(axis=1, keepdims=True)
    copies = rng.choice(n, size=(n // 100, 2), replace=False)
    x[copies[:, 1]] = x[copies[:, 0]] + 0.01 * rng.normal(size=(len(copies), d))
    stats = np.column_stack(
        (
            np.full(n, 640.0),
            np.full(n, 480.0),
            rng.uniform(0.05, 0.95, n),
            rng.uniform(0.05, 0.3, n),
            rng.uniform(0.01, 2.0, n),
            rng.uniform(2.0, 7.5, n),
            rng.uniform(0.0, 120.0, n),
        )
    )
    return DiagnosisInputs(
        task_ids=np.arange(1, n + 1, dtype=np.int64),
        embeddings=x,
        labels=labels,
        classes=tuple(f"class {i}" for i in range(c)),
        class_counts=np.bincount(labels[labels >= 0], minlength=c).astype(np.int64),
        clusters=rng.integers(0, int(np.sqrt(n / 2)), n).astype(np.int64),
        oos_probs=probs,
        error_scores=rng.random(n) * 2,
        error_alarm=1.9,
        hashes=tuple(f"{i:064x}" for i in range(n)),
        splits=tuple(rng.choice(["train", "test"], n).tolist()),
        image_stats=stats,
        slice_values={"source": tuple(rng.choice(["cam-a", "cam-b", "cam-c"], n).tolist())},
    )


def hard(
    n: int, rng: np.random.Generator, d: int = 1280, rank: int = 32
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Low-rank embeddings plus noise, 1% planted copies at cosine 0.95-0.995 (see the module),
    and the planted (source, copy) rows."""
    w = rng.normal(size=(rank, d))
    x = rng.normal(size=(n, rank)) @ w * 0.6 + rng.normal(size=(n, d)) + 1.0
    pairs = rng.choice(n, size=(n // 100, 2), replace=False)
    source = x[pairs[:, 0]] - x.mean(axis=0)
    cos = rng.uniform(THRESHOLD, 0.995, len(pairs))
    step = np.where(
        (np.arange(len(pairs)) % 2 == 0)[:, None],
        rng.normal(size=source.shape),
        rng.normal(size=(len(pairs), rank)) @ w,
    )
    step *= (np.sqrt(1 / cos**2 - 1) * np.linalg.norm(source, axis=1))[:, None]
    x[pairs[:, 1]] = x[pairs[:, 0]] + step / np.linalg.norm(step, axis=1, keepdims=True)
    return x, pairs


def old_near_pairs(embeddings: NDArray[np.floating], threshold: float) -> set[tuple[int, int]]:
    """The search the index replaced: every pair compared on 64 principal components (bar lowered
    by 0.03), candidates confirmed on the full vectors."""
    x = centred_unit(embeddings)
    reduced = PCA(64, svd_solver="randomized", random_state=0).fit_transform(x)
    reduced = (reduced / np.linalg.norm(reduced, axis=1, keepdims=True)).astype(np.float32)
    i, j, _ = brute_force_pairs(reduced, reduced, threshold=threshold - 0.03, same=True)
    keep = np.einsum("ij,ij->i", x[i], x[j]) >= threshold
    return set(zip(i[keep].tolist(), j[keep].tolist(), strict=True))


def exact_sample(
    x: NDArray[np.float32], known: NDArray[np.int64], rng: np.random.Generator
) -> tuple[set[int], set[tuple[int, int]]]:
    """The query sample (``known`` rows and 1,000 random ones) and every pair above the bar that
    touches it, by brute force on the full vectors."""
    queries = np.unique(np.concatenate((known, rng.choice(len(x), 1000, replace=False))))
    qi, qj, _ = brute_force_pairs(x[queries], x, threshold=THRESHOLD)
    pairs = {
        (min(a, b), max(a, b))
        for a, b in zip(queries[qi].tolist(), qj.tolist(), strict=True)
        if a != b
    }
    return set(queries.tolist()), pairs


def recall(found: set[tuple[int, int]], sample: set[int], truth: set[tuple[int, int]]) -> str:
    touching = {p for p in found if p[0] in sample or p[1] in sample}
    return f"{len(truth & touching) / max(len(truth), 1):.4f}"


def neighbour_searches(n: int) -> list[list[object]]:
    """Rows of the neighbour table for ``n`` items: both data sets, old and new."""
    rows: list[list[object]] = []
    for name in ("benchmark", "hard"):
        rng = np.random.default_rng(1)
        if name == "benchmark":
            inputs = synthetic(n, np.random.default_rng(0))
            embeddings, labeled = inputs.embeddings, inputs.labels >= 0
            planted = np.zeros(0, np.int64)
        else:
            embeddings, pairs = hard(n, rng)
            labeled = rng.random(n) < 0.2
            planted = pairs.ravel()
        x = centred_unit(embeddings)
        t0 = time.perf_counter()
        i, j, _ = near_pairs(embeddings, threshold=THRESHOLD)
        t1 = time.perf_counter()
        new = set(zip(i.tolist(), j.tolist(), strict=True))
        old = old_near_pairs(embeddings, THRESHOLD)
        t2 = time.perf_counter()
        # Queried exactly: the planted rows, every row either search paired, 1,000 random rows.
        known = np.asarray(sorted({a for p in new | old for a in p}), dtype=np.int64)
        sample, truth = exact_sample(x, np.concatenate((planted, known)), rng)
        t3 = time.perf_counter()
        copies = near_copies_of_labeled(embeddings, labeled, threshold=THRESHOLD)
        t4 = time.perf_counter()
        unlabeled = np.flatnonzero(~labeled)
        part = unlabeled if n <= 20_000 else unlabeled[::10]
        hit, _, _ = brute_force_pairs(x[part], x[labeled], threshold=THRESHOLD)
        old_copies = (time.perf_counter() - t4) * len(unlabeled) / len(part)
        agree = np.array_equal(copies[part], np.isin(np.arange(len(part)), hit))
        rows.append(
            [
                n,
                name,
                f"{t2 - t1:.2f}",
                f"{t1 - t0:.2f}",
                f"{len(old)} / {len(new)}",
                len(truth),
                recall(old, sample, truth),
                recall(new, sample, truth),
                f"{old_copies:.2f}",
                f"{t4 - t3:.2f}",
                "yes" if agree else "NO",
            ]
        )
    return rows


def map_times(inputs: DiagnosisInputs, used: str) -> list[object]:
    """Seconds of the map's projection, UMAP and PCA, on the drawn items (as compute draws)."""
    limit = DiagnosisSettings().map_points
    n = len(inputs.task_ids)
    rows = np.random.default_rng(0).choice(n, min(n, limit), replace=False)
    x, first = inputs.embeddings[rows], np.zeros(len(rows), dtype=bool)
    seconds = []
    methods: tuple[Method, ...] = ("umap", "pca")
    for method in methods:
        t0 = time.perf_counter()
        project(x, method=method, first=first, seed=0)
        seconds.append(f"{time.perf_counter() - t0:.2f}")
    return [n, len(rows), used, *seconds]


def view(saved: str) -> Diagnosis:
    """What diagnosis_view does, without a store: read the saved JSON, add links."""
    return with_links(Diagnosis.model_validate_json(saved), "http://ls", 1, drift_threshold=0.75)


def main() -> None:
    quiet_third_party()  # Lightning's per-fit chatter around the tables
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1k and 10k items only")
    sizes = (1000, 10_000) if parser.parse_args().quick else (10_000, 100_000)
    print(f"{'items':>7} {'compute s':>10} {'json KB':>8} {'page s':>7} {'page KB':>8}")
    maps: list[list[object]] = []
    for n in sizes:
        rng = np.random.default_rng(0)
        inputs = synthetic(n, rng)
        t0 = time.perf_counter()
        diag = compute_diagnosis(inputs, limits=DiagnosisSettings(), rng=rng)
        t1 = time.perf_counter()
        saved = diag.model_dump_json()
        size = len(saved) / 1024
        page = Pages().dashboard(view(saved), 1)
        t2 = time.perf_counter()
        print(f"{n:>7} {t1 - t0:>10.2f} {size:>8.0f} {t2 - t1:>7.2f} {len(page) / 1024:>8.0f}")
        maps.append(map_times(inputs, diag.map.projection))
    print_table(
        ["items", "drawn", "compute used", "umap s", "pca s"],
        maps,
        title="Embedding map alone (the drawn items; UMAP's numba compiled by the first size)",
    )
    print_table(
        [
            "items",
            "data",
            "old pairs s",
            "new pairs s",
            "pairs old / new",
            "exact pairs (sample)",
            "old recall",
            "new recall",
            "old copies s",
            "new copies s",
            "copies agree",
        ],
        [row for n in sizes for row in neighbour_searches(n)],
        title=f"Neighbour searches (cosine >= {THRESHOLD}), old vs new, same run",
    )


def explanation_times(repeats: int = 3) -> None:
    """Seconds per task for each map kind on the default backbone (EfficientNet-Lite0, 224 px),
    with a head trained on random embeddings (the maps' cost does not depend on what it learned)."""
    import torch
    from PIL import Image

    from backend.diagnosis.explain import grad_cam, occlusion
    from backend.model.backbones import build_backbone
    from backend.model.train import train_model
    from backend.settings import ModelSettings

    torch.set_num_threads(1)
    settings = ModelSettings(max_epochs=5, committee_size=1, cv_folds=2)
    backbone = build_backbone(settings)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, backbone.dim)).astype(np.float32)
    model = train_model(
        x, np.arange(40) % 2, classes=("a", "b"), multilabel=False, settings=settings
    )
    image = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    pixels = backbone.preprocess(image)
    timings: dict[str, list[float]] = {"grad-cam": [], "occlusion": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        grad_cam(backbone, model, pixels)
        t1 = time.perf_counter()
        occlusion(backbone, model, pixels, 0)
        timings["grad-cam"].append(t1 - t0)
        timings["occlusion"].append(time.perf_counter() - t1)
    print(f"\n{'map (EfficientNet-Lite0, 1 thread)':<36} {'s per task (median of 3)':>26}")
    for name, values in timings.items():
        print(f"{name:<36} {np.median(values):>26.2f}")


if __name__ == "__main__":
    main()
    explanation_times()
