"""Throughput of each probability-based signal, 10k / 100k / 1M items x 100 classes, vs baselines.

    python benchmarks/bench_strategy_throughput.py [--quick] [--threads N] [--sizes N ...]
        [--signals NAME ...] [--repeats R]

Items per second of the per-item score (arrays in, (n,) out), best of ``repeats`` runs, on one
thread unless ``--threads`` and again on every usable CPU (the scoring kernels' default: chunks
scored on parallel threads); the baselines and the speed-up are on ``--threads``. modAL's
functions get a stub classifier whose ``predict_proba`` returns the very same array (no copy),
cleanlab's get the same labels and probabilities. Committees have 5 members (float32, 1M x 100 x 5
is 2 GB). modAL's committee functions loop over items in Python and are skipped at 1M. Also times
Pool validation, top-100 selection and k-means of 100k x 512.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import machine, parse_args, print_table
from threadpoolctl import threadpool_limits

from strategies import REGISTRY, Pool
from strategies.balance import balance_scores
from strategies.base import available_threads, threads
from strategies.coverage import cluster_embeddings, default_n_clusters
from strategies.disagreement import (
    confident_learning_mask,
    kl_consensus_scores,
    normalized_margin_scores,
    self_confidence_scores,
    vote_entropy_scores,
)
from strategies.uncertainty import (
    bald_scores,
    entropy_scores,
    least_confidence_scores,
    margin_scores,
)

N_CLASSES, N_MEMBERS = 100, 5
SIZES = (10_000, 100_000, 1_000_000)
MODAL_COMMITTEE_MAX = 100_000


class _Stub:
    """A fitted classifier whose predictions are the benchmark arrays themselves."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.classes_ = np.arange(probs.shape[1])

    def predict_proba(self, X: Any, **_: Any) -> np.ndarray:
        return self.probs

    def predict(self, X: Any, **_: Any) -> np.ndarray:
        return self.probs.argmax(axis=1)


def _data(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    probs = rng.random((n, N_CLASSES)) ** 4
    probs /= probs.sum(axis=1, keepdims=True)
    committee = rng.random((N_MEMBERS, n, N_CLASSES), dtype=np.float32) ** 4
    committee /= committee.sum(axis=2, keepdims=True)
    labels = rng.integers(N_CLASSES, size=n)
    labels[: n // 2] = -1
    return {"probs": probs, "committee": committee, "labels": labels}


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _modal_committee(committee: np.ndarray, query: str) -> Callable[[], object]:
    from modAL import disagreement
    from modAL.models import ActiveLearner, Committee

    learners = [ActiveLearner(estimator=_Stub(m)) for m in committee]
    X = np.zeros((committee.shape[1], 1))
    return lambda: getattr(disagreement, query)(Committee(learners), X)


def contenders(d: dict[str, np.ndarray]) -> list[tuple[str, Callable[[], object], Any]]:
    """(signal, ours, baseline or None) thunks on one data set."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from modAL import uncertainty

    p, c, y = d["probs"], d["committee"], d["labels"]
    stub, X = _Stub(p), np.zeros((p.shape[0], 1))
    labeled = y >= 0
    yl, pl = y[labeled], p[labeled]
    big = p.shape[0] > MODAL_COMMITTEE_MAX
    return [
        ("least_confidence", lambda: least_confidence_scores(p),
         lambda: uncertainty.classifier_uncertainty(stub, X)),
        ("margin", lambda: margin_scores(p), lambda: uncertainty.classifier_margin(stub, X)),
        ("entropy", lambda: entropy_scores(p), lambda: uncertainty.classifier_entropy(stub, X)),
        ("balance", lambda: balance_scores(p, y), None),
        ("bald (M=5)", lambda: bald_scores(c), None),
        ("vote_entropy (M=5)", lambda: vote_entropy_scores(c),
         None if big else _modal_committee(c, "vote_entropy")),
        ("kl_consensus (M=5)", lambda: kl_consensus_scores(c),
         None if big else _modal_committee(c, "KL_max_disagreement")),
        ("self_confidence", lambda: self_confidence_scores(y, p),
         lambda: get_label_quality_scores(yl, pl, method="self_confidence")),
        ("normalized_margin", lambda: normalized_margin_scores(y, p),
         lambda: get_label_quality_scores(yl, pl, method="normalized_margin")),
        ("confident_learning mask", lambda: confident_learning_mask(y, p),
         lambda: find_label_issues(yl, pl, filter_by="confident_learning", n_jobs=1)),
    ]  # fmt: skip


def _rate(n: int, seconds: float | None) -> str:
    return "skipped" if seconds is None else f"{n / seconds / 1e6:.1f}M/s ({seconds * 1e3:.0f} ms)"


def signal_rows(
    sizes: tuple[int, ...], repeats: int, n_threads: int, only: frozenset[str] | None = None
) -> list[list[str]]:
    """One row per signal and size: ours on ``n_threads`` and on every CPU, the baseline, and the
    speed-up of ours on ``n_threads`` over it.

    ``only``: signal names (the row label's first word) to time; all, with the Pool and top-100
    rows, when None.
    """
    all_cpus = available_threads()

    def timed(fn: Callable[[], object], workers: int) -> float:
        with threads(workers):
            return _best(fn, repeats)

    rows = []
    for n in sizes:
        d = _data(n, np.random.default_rng(0))
        total = [0.0, 0.0]
        for name, ours, theirs in contenders(d):
            if only is not None and name.split()[0] not in only:
                continue
            t_ours, t_all = timed(ours, n_threads), timed(ours, all_cpus)
            total[0], total[1] = total[0] + t_ours, total[1] + t_all
            t_theirs = _best(theirs, 1 if n >= 1_000_000 else repeats) if theirs else None
            speedup = f"{t_theirs / t_ours:.1f}x" if t_theirs else "-"
            rows.append(
                [f"{n:,}", name, _rate(n, t_ours), _rate(n, t_all), _rate(n, t_theirs), speedup]
            )
        ours_total, all_total = f"{total[0]:.2f} s", f"{total[1]:.2f} s"
        rows.append([f"{n:,}", "all signals above, total", ours_total, all_total, "-", "-"])
        if only is not None:
            continue
        pool_t = _best(lambda d=d: Pool(labels=d["labels"], probs=d["probs"]), repeats)
        pool = Pool(labels=d["labels"], probs=d["probs"])

        def select(pool: Pool = pool) -> object:
            return REGISTRY["margin"](pool, 100, rng=np.random.default_rng(0))

        select_t, select_all = timed(select, n_threads), timed(select, all_cpus)
        rows.append([f"{n:,}", "Pool(labels, probs) validation", _rate(n, pool_t), "-", "-", "-"])
        rows.append(
            [
                f"{n:,}",
                "REGISTRY['margin'] top-100 (score+select)",
                _rate(n, select_t),
                _rate(n, select_all),
                "-",
                "-",
            ]
        )
        del d, pool
    return rows


def clustering_rows(n: int, dims: int, repeats: int) -> list[list[str]]:
    """k-means of n x dims embeddings with the default number of clusters; faiss when installed."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(64, dims)).astype(np.float32)
    X = centres[rng.integers(64, size=n)] + rng.normal(size=(n, dims)).astype(np.float32)
    k = default_n_clusters(n)
    ours = _best(lambda: cluster_embeddings(X, n_clusters=k, rng=np.random.default_rng(0)), repeats)
    rows = [
        [
            f"{n:,} x {dims}",
            f"k-means K={k} (ours: MiniBatchKMeans + assign)",
            f"{ours:.2f} s",
            "-",
            "-",
            "-",
        ]
    ]
    try:
        import faiss
    except ImportError:
        return rows

    def run_faiss() -> None:
        km = faiss.Kmeans(dims, k, niter=20, seed=1, max_points_per_centroid=256)
        km.train(X)
        km.index.search(X, 1)

    t = _best(run_faiss, repeats)
    rows.append(
        [f"{n:,} x {dims}", f"k-means K={k} (faiss-cpu 20 iters + assign)", f"{t:.2f} s"]
        + ["-"] * 3
    )
    return rows


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="item counts")
    parser.add_argument("--signals", nargs="+", help="only these signals, no clustering")
    parser.add_argument("--repeats", type=int, help="runs per timing, best kept (3; quick: 1)")


def main() -> None:
    args = parse_args(__doc__ or "", extra=_flags)
    repeats = args.repeats or (1 if args.quick else 3)
    only = frozenset(args.signals) if args.signals else None
    with threadpool_limits(args.threads):
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
        rows = signal_rows(tuple(args.sizes), repeats, args.threads, only)
        if only is None:
            rows += clustering_rows(100_000, 512, repeats)
    headers = [
        "items",
        "signal",
        f"ours ({args.threads} thread(s))",
        f"ours ({available_threads()} threads)",
        "modAL / cleanlab",
        "speed-up",
    ]
    title = f"Strategy throughput, {N_CLASSES} classes, {args.threads} thread(s) ({machine()})"
    print_table(headers, rows, title=title)


if __name__ == "__main__":
    main()
