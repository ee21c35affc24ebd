"""Dashboard speed: compute the diagnosis and build the page for projects of 1k-10k items.

Synthetic embeddings (d=1280, like efficientnet_lite0) with 10 classes, 20% labeled, the newest
10% unlabeled (drift check), random out-of-sample probabilities; prints one row per size:
compute (k-means skipped: the cycle's clusters are passed, as in a real cycle), JSON size, page
build time and page size.

    python benchmarks/bench_dashboard.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from backend.dashboard_page import render_page
from backend.diagnostics import DiagnosisInputs, compute_diagnosis, task_link, thumb_url
from backend.settings import DiagnosisSettings


def synthetic(n: int, rng: np.random.Generator, d: int = 1280, c: int = 10) -> DiagnosisInputs:
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + 3 * np.eye(c, d)[y]
    labels = np.where(np.arange(n) < n // 5, y, -1).astype(np.int64)
    probs = rng.dirichlet(np.ones(c), n)
    probs[np.arange(n), y] += 2.0
    probs /= probs.sum(axis=1, keepdims=True)
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
    )


def view(diag: dict[str, object]) -> dict[str, object]:
    """What diagnosis_view adds, without a store: links, thumbnails, an empty curve."""
    for row in (*diag["label_errors"], *diag["outliers"]):  # type: ignore[misc]
        row["ls_url"], row["thumbnail"] = task_link("http://ls", 1, row["task"]), thumb_url(1, 0)
    for cluster in diag["coverage"]["under_covered"]:  # type: ignore[index]
        cluster["example_links"] = [task_link("http://ls", 1, t) for t in cluster["examples"]]
    return {**diag, "learning_curve": [], "label_studio_url": "http://ls"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1k and 10k items only")
    sizes = (1000, 10_000) if parser.parse_args().quick else (1000, 5000, 10_000, 20_000)
    print(f"{'items':>7} {'compute s':>10} {'json KB':>8} {'page s':>7} {'page KB':>8}")
    for n in sizes:
        rng = np.random.default_rng(0)
        inputs = synthetic(n, rng)
        t0 = time.perf_counter()
        diag = compute_diagnosis(inputs, limits=DiagnosisSettings(), rng=rng)
        t1 = time.perf_counter()
        size = len(json.dumps(diag)) / 1024
        page = render_page(view(json.loads(json.dumps(diag))), 1)
        t2 = time.perf_counter()
        print(f"{n:>7} {t1 - t0:>10.2f} {size:>8.0f} {t2 - t1:>7.2f} {len(page) / 1024:>8.0f}")


if __name__ == "__main__":
    main()
