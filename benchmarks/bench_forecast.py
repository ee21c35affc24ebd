"""The forecast's error: fit the learning curve a `labelloop simulate` run has at 100 labels,
forecast the labels needed to reach higher accuracies, and compare with the labels the run
actually needed.

Runs the real cycle code (simulate) with the configured default strategy on the shipped data
sets; test accuracy is measured on the held-out split after every round. A target is reached at
the first round whose accuracy is at least the target. Prints one row per (data set, seed,
target) and the median relative error ``|forecast - actual| / actual`` (total labels).

    python benchmarks/bench_forecast.py [--quick] [--datasets digits,textures] [--seeds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from backend.diagnosis.forecast import forecast  # noqa: E402
from backend.diagnosis.schema import CurvePoint  # noqa: E402
from backend.settings import load_settings  # noqa: E402
from backend.simulate.run import load_dataset, simulate  # noqa: E402

FIT_AT = 100


def _points(points: list[tuple[int, float]]) -> list[CurvePoint]:
    return [
        CurvePoint(version=str(n), created_at="", n_labels=n, accuracy=a, macro_f1=None)
        for n, a in points
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one seed, budget 250")
    parser.add_argument("--datasets", default="digits,textures")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=20)
    args = parser.parse_args()
    seeds = range(1 if args.quick else args.seeds)
    budget = 250 if args.quick else args.budget
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(environ={"LABELLOOP_STORE__DATA_DIR": str(Path(tmp))})
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"num_threads": 1})}
        )
        print(
            f"{'data set':<10} {'seed':>4} {'acc@100':>8} {'target':>7} {'forecast':>9} "
            f"{'actual':>7} {'rel err':>8}"
        )
        errors = []
        for name in args.datasets.split(","):
            started = time.perf_counter()
            curves = simulate(
                settings,
                load_dataset(name),
                {"default": settings.strategy.weights},
                seeds=list(seeds),
                budget=budget,
                batch_size=args.batch_size,
            )
            for curve in curves:
                points = [(p.labels, p.accuracy) for p in curve.points]
                early = [(n, a) for n, a in points if n <= FIT_AT]
                result = forecast(_points(early))
                if result is None:
                    continue
                for target in result.targets:
                    reached = next((n for n, a in points if a >= target.accuracy), None)
                    if reached is None or target.more_labels is None:
                        label = "never" if reached is None else str(reached)
                        print(
                            f"{name:<10} {curve.seed:>4} {early[-1][1]:>8.3f} "
                            f"{target.accuracy:>7.3f} {target.more_labels!s:>9} "
                            f"{label:>7} {'-':>8}"
                        )
                        continue
                    predicted = result.labels_now + target.more_labels
                    error = abs(predicted - reached) / reached
                    errors.append(error)
                    print(
                        f"{name:<10} {curve.seed:>4} {early[-1][1]:>8.3f} "
                        f"{target.accuracy:>7.3f} {predicted:>9} {reached:>7} {error:>8.2f}"
                    )
            print(f"# {name}: {time.perf_counter() - started:.0f} s")
        if errors:
            print(f"median relative error {np.median(errors):.2f} over {len(errors)} targets")


if __name__ == "__main__":
    main()
