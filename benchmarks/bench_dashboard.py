"""Dashboard speed: compute the diagnosis and build the page for projects of 1k-10k items.

Synthetic embeddings (d=1280, like efficientnet_lite0) with 10 classes, 20% labeled, the newest
10% unlabeled (drift check), random out-of-sample probabilities; prints one row per size:
compute (k-means skipped: the cycle's clusters are passed, as in a real cycle), JSON size, page
build time and page size.

    python benchmarks/bench_dashboard.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from backend.diagnosis.compute import DiagnosisInputs, compute_diagnosis
from backend.diagnosis.page import render_page
from backend.diagnosis.schema import Diagnosis
from backend.diagnosis.view import with_links
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


def view(saved: str) -> Diagnosis:
    """What diagnosis_view does, without a store: read the saved JSON, add links."""
    return with_links(Diagnosis.model_validate_json(saved), "http://ls", 1, drift_threshold=0.75)


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
        saved = diag.model_dump_json()
        size = len(saved) / 1024
        page = render_page(view(saved), 1)
        t2 = time.perf_counter()
        print(f"{n:>7} {t1 - t0:>10.2f} {size:>8.0f} {t2 - t1:>7.2f} {len(page) / 1024:>8.0f}")


if __name__ == "__main__":
    main()
