"""Label-error detection with planted noise: our suspicion and decision vs every cleanlab method.

    python benchmarks/bench_label_errors.py [--quick] [--dataset NAME ...] [--seeds N]

Data sets (offline): ``digits`` (8x8 pixels / 16), ``digits-emb`` (the digits rendered at 64 px and
embedded by the default backbone, EfficientNet-Lite0 at 96 px) and ``tiles`` (grayscale tiles of
ten scikit-image photos, the same backbone); embeddings are those of
``bench_label_efficiency.py`` (cached under ``.cache/bench-embeddings``).

Noise: uniform (a random other class) or class-pair (each class swapped with one partner), at 5, 10
and 20 % of the labels. Every method sees the same out-of-sample probabilities: 5-fold
``cross_val_predict`` of a LogisticRegression on the noisy labels (on 64 PCA components of the
embedded sets). Ours adds model-free evidence: the labeled neighbours' vote in the same feature
space (embeddings, or pixels for ``digits``) and the out-of-bag votes of 5 bootstrap
LogisticRegressions (committee agreement).

Table 1 per row: the best F1 among cleanlab's ``find_label_issues`` filters (which one), ours;
the best AUROC among cleanlab's ``get_label_quality_scores`` methods, ours; precision of the top 20
and 50 (cleanlab's self-confidence ranking vs ours); whether the goal holds (F1 >= cleanlab's best
+ 0.02 and AUROC >= cleanlab's best). Table 2: flags raised on correct labels only, as a project
grows (25, 50, 100 labels drawn at random), ours vs cleanlab's default.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
from _common import machine, print_table
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from strategies.label_quality import label_quality

DATASETS = ("digits", "digits-emb", "tiles")
KINDS = ("uniform", "class-pair")
RATES = (0.05, 0.10, 0.20)
FILTERS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
RANKINGS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
COMMITTEE = 5
GROWTH = (25, 50, 100)


def load(dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features for the model, features for the neighbours, labels)."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data / 16.0, digits.data / 16.0, digits.target
    from bench_label_efficiency import features

    data = np.load(features(dataset))
    X = data["X"]
    return PCA(64, random_state=0).fit_transform(X), X, data["y"]


def inject(y: np.ndarray, kind: str, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of ``y`` with ``rate`` of the labels changed (uniform or class-pair)."""
    n_classes = int(y.max()) + 1
    noisy = y.copy()
    flip = rng.choice(len(y), int(rate * len(y)), replace=False)
    if kind == "uniform":
        noisy[flip] = (y[flip] + rng.integers(1, n_classes, size=len(flip))) % n_classes
    else:
        partner = rng.permutation(n_classes)  # pairs (partner[0], partner[1]), ...
        swap = np.arange(n_classes)
        for a, b in zip(partner[0::2], partner[1::2], strict=False):
            swap[a], swap[b] = b, a
        unpaired = swap[y[flip]] == y[flip]  # odd class count: its one class goes to a neighbour
        noisy[flip] = np.where(unpaired, (y[flip] + 1) % n_classes, swap[y[flip]])
    return noisy


def _model() -> LogisticRegression:
    return LogisticRegression(max_iter=500)


def oob_committee(X: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """(n, C) mean vote of the bootstrap members that did not see each item (uniform if none)."""
    rng = np.random.default_rng(seed)
    total, count = np.zeros((len(y), n_classes)), np.zeros(len(y))
    for _ in range(COMMITTEE):
        drawn = rng.integers(0, len(y), len(y))
        out = np.setdiff1d(np.arange(len(y)), drawn)
        member = _model().fit(X[drawn], y[drawn])
        total[np.ix_(out, member.classes_)] += member.predict_proba(X[out])
        count[out] += 1
    probs = np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], 1.0 / n_classes)
    return probs / probs.sum(axis=1, keepdims=True)


def ours(
    X: np.ndarray, E: np.ndarray, noisy: np.ndarray, probs: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    committee = oob_committee(X, noisy, probs.shape[1], seed)
    quality = label_quality(noisy, probs, embeddings=E, extra=[committee])
    return quality.flagged, quality.p_error


def scores(truth: np.ndarray, mask: np.ndarray, rank: np.ndarray) -> dict[str, float]:
    tp = float((mask & truth).sum())
    precision, recall = tp / max(mask.sum(), 1), tp / max(truth.sum(), 1)
    top = np.argsort(-rank, kind="stable")
    return {
        "F1": 2 * precision * recall / max(precision + recall, 1e-12),
        "AUROC": float(roc_auc_score(truth, rank)),
        "P@20": float(truth[top[:20]].mean()),
        "P@50": float(truth[top[:50]].mean()),
    }


def one_run(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], kind: str, rate: float, seed: int
) -> dict[str, dict[str, float]]:
    X, E, y = data
    noisy = inject(y, kind, rate, np.random.default_rng(seed))
    truth = noisy != y
    probs = cross_val_predict(_model(), X, noisy, cv=5, method="predict_proba")
    out: dict[str, dict[str, float]] = {}
    default_rank = 1.0 - get_label_quality_scores(noisy, probs)
    for name in FILTERS:
        mask = find_label_issues(noisy, probs, filter_by=name, n_jobs=1)
        out[f"filter {name}"] = scores(truth, mask, default_rank)
    for name in RANKINGS:
        rank = 1.0 - get_label_quality_scores(noisy, probs, method=name)
        out[f"rank {name}"] = scores(truth, rank > 0.5, rank)
    started = time.perf_counter()
    out["ours"] = scores(truth, *ours(X, E, noisy, probs, seed))
    out["ours"]["ms"] = 1000 * (time.perf_counter() - started)
    return out


def noise_rows(dataset: str, seeds: int, rates: tuple[float, ...]) -> list[list[str]]:
    data = load(dataset)
    rows = []
    for kind in KINDS:
        for rate in rates:
            runs = [one_run(data, kind, rate, seed) for seed in range(seeds)]
            mean = {m: {k: np.mean([r[m][k] for r in runs]) for k in runs[0][m]} for m in runs[0]}
            best_f1 = max((k for k in mean if k.startswith("filter")), key=lambda k: mean[k]["F1"])
            best_auc = max(
                (k for k in mean if k.startswith("rank")), key=lambda k: mean[k]["AUROC"]
            )
            f1, auc = mean["ours"]["F1"], mean["ours"]["AUROC"]
            goal = f1 >= mean[best_f1]["F1"] + 0.02 and auc >= mean[best_auc]["AUROC"]
            rows.append(
                [
                    dataset,
                    f"{kind} {rate:.0%}",
                    f"{mean[best_f1]['F1']:.3f} ({best_f1.split(' ', 1)[1]})",
                    f"{f1:.3f}",
                    f"{mean[best_auc]['AUROC']:.3f} ({best_auc.split(' ', 1)[1]})",
                    f"{auc:.3f}",
                    f"{mean['rank self_confidence']['P@20']:.2f} / {mean['ours']['P@20']:.2f}",
                    f"{mean['rank self_confidence']['P@50']:.2f} / {mean['ours']['P@50']:.2f}",
                    "yes" if goal else "NO",
                    f"{mean['ours']['ms']:.0f}",
                ]
            )
    return rows


def growth_rows(dataset: str, seeds: int) -> list[list[str]]:
    """Flags on correct labels only, with 25 / 50 / 100 labels drawn at random."""
    X, E, y = load(dataset)
    n_classes = int(y.max()) + 1
    rows = []
    for n in GROWTH:
        ours_flags, theirs = [], []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            idx = rng.choice(len(y), n, replace=False)
            probs = _cv_probs(X[idx], y[idx], n_classes)
            committee = oob_committee(X[idx], y[idx], n_classes, seed)
            quality = label_quality(y[idx], probs, embeddings=E[idx], extra=[committee])
            ours_flags.append(int(quality.flagged.sum()))
            theirs.append(_cleanlab_flags(y[idx], probs))
        rows.append(
            [
                dataset,
                str(n),
                f"{np.mean(theirs):.1f}",
                f"{np.mean(ours_flags):.1f}",
                f"{100 * np.mean(ours_flags) / n:.1f} %",
            ]
        )
    return rows


def _cv_probs(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Out-of-sample probabilities over all C classes even when a fold lacks some of them."""
    probs = np.full((len(y), n_classes), 1e-6)
    counts = np.bincount(y, minlength=n_classes)
    folds = min(5, max(2, int(counts[counts > 0].min())))
    split: Callable[..., object]
    if (counts[counts > 0] >= folds).all():
        split = StratifiedKFold(folds, shuffle=True, random_state=0).split
    else:
        from sklearn.model_selection import KFold

        split = KFold(folds, shuffle=True, random_state=0).split
    for train, test in split(X, y):  # type: ignore[attr-defined]
        if len(np.unique(y[train])) < 2:
            continue
        member = _model().fit(X[train], y[train])
        probs[np.ix_(test, member.classes_)] = member.predict_proba(X[test])
    return probs / probs.sum(axis=1, keepdims=True)


def _cleanlab_flags(labels: np.ndarray, probs: np.ndarray) -> int:
    try:
        return int(find_label_issues(labels, probs, n_jobs=1).sum())
    except ValueError:  # cleanlab refuses classes with too few labels
        return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="digits only, 1 seed, 10 %% noise")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    args = parser.parse_args()
    datasets = ["digits"] if args.quick else args.dataset
    seeds, rates = (1, (0.10,)) if args.quick else (args.seeds, RATES)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    with threadpool_limits(args.threads):
        rows = [row for d in datasets for row in noise_rows(d, seeds, rates)]
        growth = [row for d in datasets for row in growth_rows(d, seeds)]
    print_table(
        [
            "data",
            "noise",
            "cleanlab best F1 (filter)",
            "ours F1",
            "cleanlab best AUROC (method)",
            "ours AUROC",
            "P@20 cl / ours",
            "P@50 cl / ours",
            "goal",
            "ours ms",
        ],
        rows,
        title=(
            f"Label-error detection, 5-fold out-of-sample LogisticRegression probabilities, "
            f"mean of {seeds} seed(s) ({machine()}, {args.threads} BLAS thread(s))"
        ),
    )
    print_table(
        [
            "data",
            "labels",
            "cleanlab default flags",
            "ours flags",
            "ours: share of correct labels flagged",
        ],
        growth,
        title=f"Flags on correct labels only (random labels, mean of {seeds} seed(s))",
    )


if __name__ == "__main__":
    main()
