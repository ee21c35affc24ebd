"""Label-error detection on digits with injected noise: our review ranking vs cleanlab.

    python benchmarks/bench_label_errors.py [--quick]

Noise: 10 % uniform (a random other class) or 10 % class-pair (swapped with a look-alike digit:
1-7, 3-5, 4-9, 2-8, 0-6). Out-of-sample probabilities from 5-fold ``cross_val_predict`` of a
LogisticRegression on the noisy labels, the same arrays for every method. Flags give precision,
recall and F1; the ranking gives AUROC and precision of the top 50. Mean over seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from _common import SEEDS, machine, parse_args, print_table
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from threadpoolctl import threadpool_limits

from strategies import Pool
from strategies.combine import review_queue
from strategies.disagreement import (
    confident_learning_mask,
    normalized_margin_scores,
    self_confidence_scores,
)

PAIRS = ((1, 7), (3, 5), (4, 9), (2, 8), (0, 6))
NOISE = 0.10
TOP = 50
Detector = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def inject(y: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of ``y`` with 10 % of labels changed (uniform or class-pair)."""
    noisy = y.copy()
    flip = rng.choice(len(y), int(NOISE * len(y)), replace=False)
    if kind == "uniform":
        noisy[flip] = (y[flip] + rng.integers(1, 10, size=len(flip))) % 10
    else:
        partner = np.arange(10)
        for a, b in PAIRS:
            partner[a], partner[b] = b, a
        noisy[flip] = partner[y[flip]]
    return noisy


def _cleanlab(filter_by: str) -> Detector:
    def detect(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
        return mask, 1.0 - get_label_quality_scores(labels, probs)

    return detect


def _ours_review(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pool = Pool(labels=labels, oos_probs=probs, probs=probs)
    order, scores, _, evidence, _ = review_queue(pool, {}, rng=np.random.default_rng(0))
    mask, ranked = np.zeros(len(labels), dtype=bool), np.zeros(len(labels))
    mask[order[evidence]] = True
    ranked[order] = scores
    return mask, ranked


def _threshold(score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Detector:
    def detect(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = score(labels, probs)
        return values > 0.5, values

    return detect


DETECTORS: dict[str, Detector] = {
    "cleanlab find_label_issues (default)": _cleanlab("prune_by_noise_rate"),
    "cleanlab find_label_issues (confident_learning)": _cleanlab("confident_learning"),
    "ours: review queue (confident_learning)": _ours_review,
    "ours: self_confidence > 0.5": _threshold(self_confidence_scores),
    "ours: normalized_margin > 0.5": _threshold(normalized_margin_scores),
    "ours: confident_learning mask + margin rank": lambda y, p: (
        confident_learning_mask(y, p),
        confident_learning_mask(y, p) + normalized_margin_scores(y, p),
    ),
}


def metrics(truth: np.ndarray, mask: np.ndarray, score: np.ndarray) -> list[float]:
    """Precision, recall, F1 of the mask; AUROC and precision@50 of the score."""
    tp = float((mask & truth).sum())
    precision = tp / max(mask.sum(), 1)
    recall = tp / max(truth.sum(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    top = np.argsort(-score, kind="stable")[:TOP]
    return [precision, recall, f1, roc_auc_score(truth, score), truth[top].mean()]


def run(seed: int, kind: str) -> dict[str, list[float]]:
    """All detectors on one noisy copy of digits; metrics plus milliseconds per detector."""
    digits = load_digits()
    X, y = digits.data / 16.0, digits.target
    noisy = inject(y, kind, np.random.default_rng(seed))
    model = LogisticRegression(max_iter=300)
    probs = cross_val_predict(model, X, noisy, cv=5, method="predict_proba")
    out = {}
    for name, detect in DETECTORS.items():
        start = time.perf_counter()
        mask, score = detect(noisy, probs)
        elapsed = 1000 * (time.perf_counter() - start)
        out[name] = [*metrics(noisy != y, mask, score), elapsed]
    return out


def main() -> None:
    args = parse_args(__doc__ or "")
    rows = []
    with threadpool_limits(args.threads):
        for kind in ("uniform", "class-pair"):
            runs = [run(seed, kind) for seed in SEEDS[: args.seeds]]
            for name in DETECTORS:
                mean = np.mean([r[name] for r in runs], axis=0)
                rows.append([kind, name, *(f"{v:.3f}" for v in mean[:5]), f"{mean[5]:.1f}"])
    headers = ["noise", "method", "precision", "recall", "F1", "AUROC", f"P@{TOP}", "ms"]
    title = (
        f"Label-error detection, digits, {NOISE:.0%} injected noise, 5-fold out-of-sample "
        f"LogisticRegression probabilities, {args.seeds} seeds ({machine()})"
    )
    print_table(headers, rows, title=title)


if __name__ == "__main__":
    main()
