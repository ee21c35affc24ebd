"""Dashboard speed: compute the diagnosis (every section) and build the page, 10k and 100k items.

Synthetic embeddings (d=1280, like efficientnet_lite0) with 10 classes, 20% labeled, the newest
10% unlabeled (drift check), random out-of-sample probabilities, 1% planted near-duplicates, a
split and a source field, image statistics for every item; prints one row per size: compute
(k-means skipped: the cycle's clusters are passed, as in a real cycle), the near-duplicate search
alone (part of compute), JSON size, page build time and page size. One BLAS thread.

    python benchmarks/bench_dashboard.py [--quick]      # --quick: 1k and 10k items
"""

from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from backend.diagnosis.compute import DiagnosisInputs, compute_diagnosis  # noqa: E402
from backend.diagnosis.duplicates import near_pairs  # noqa: E402
from backend.diagnosis.page import render_page  # noqa: E402
from backend.diagnosis.schema import Diagnosis  # noqa: E402
from backend.diagnosis.view import with_links  # noqa: E402
from backend.settings import DiagnosisSettings  # noqa: E402


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


def view(saved: str) -> Diagnosis:
    """What diagnosis_view does, without a store: read the saved JSON, add links."""
    return with_links(Diagnosis.model_validate_json(saved), "http://ls", 1, drift_threshold=0.75)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1k and 10k items only")
    sizes = (1000, 10_000) if parser.parse_args().quick else (10_000, 100_000)
    print(
        f"{'items':>7} {'compute s':>10} {'of it dups s':>13} {'json KB':>8} {'page s':>7} "
        f"{'page KB':>8}"
    )
    for n in sizes:
        rng = np.random.default_rng(0)
        inputs = synthetic(n, rng)
        t0 = time.perf_counter()
        diag = compute_diagnosis(inputs, limits=DiagnosisSettings(), rng=rng)
        t1 = time.perf_counter()
        saved = diag.model_dump_json()
        size = len(saved) / 1024
        page = render_page(view(saved), 1)
        t2 = time.perf_counter()
        near_pairs(inputs.embeddings, threshold=0.95)  # again alone: its share of compute
        dups = time.perf_counter() - t2
        print(
            f"{n:>7} {t1 - t0:>10.2f} {dups:>13.2f} {size:>8.0f} {t2 - t1:>7.2f} "
            f"{len(page) / 1024:>8.0f}"
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
    timings = {"grad-cam": [], "occlusion": []}
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
