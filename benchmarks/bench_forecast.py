"""The forecast's error: fit the learning curve a `labelloop simulate` run has at 100 labels,
forecast the labels needed to reach higher accuracies, and compare with the labels the run
actually needed.

Runs the real cycle code (simulate) with the configured default strategy on the shipped data
sets; test accuracy is measured on the held-out split after every round. A target is reached at
the first round whose accuracy is at least the target. Prints one row per (data set, seed,
target) and the median relative error ``|forecast - actual| / actual`` (total labels).

A run already at its plateau by 100 labels (the forecast has no target above today's accuracy)
is not silent: a second table checks every run's "diminishing returns" call against the gain the
run actually made over the next ``STEP`` labels.

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

from backend.diagnosis.forecast import SMALL_GAIN, STEP, forecast  # noqa: E402
from backend.diagnosis.schema import CurvePoint, Forecast  # noqa: E402
from backend.logs import quiet_third_party  # noqa: E402
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
    quiet_third_party()
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
        calls = []
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
                    print(
                        f"{name:<10} {curve.seed:>4} no forecast (fewer than 3 versions or no fit)"
                    )
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
                calls.append(_diminishing_call(name, curve.seed, points, result))
            print(f"# {name}: {time.perf_counter() - started:.0f} s")
        if errors:
            print(f"median relative error {np.median(errors):.2f} over {len(errors)} targets")
        _print_calls(calls)


def _diminishing_call(
    name: str, seed: int, points: list[tuple[int, float]], result: Forecast
) -> tuple[str, int, float, float, float | None, bool, bool | None]:
    """(set, seed, plateau, forecast gain, actual gain over the next STEP labels, the
    forecast's "diminishing" call, whether the run agrees).

    A run whose pool ran out before STEP more labels is judged on its gain up to its last label:
    every remaining item was labeled, so no more labels could have added more.
    """
    now = result.labels_now
    later = [a for n, a in points if n >= now + STEP] or [a for n, a in points if n > now][-1:]
    at_now = [a for n, a in points if n <= now][-1]
    actual = None if not later else later[0] - at_now
    agrees = None if actual is None else result.diminishing == (actual < SMALL_GAIN)
    return name, seed, result.plateau, result.gain_next, actual, result.diminishing, agrees


def _print_calls(
    calls: list[tuple[str, int, float, float, float | None, bool, bool | None]],
) -> None:
    print(
        f"\n{'data set':<10} {'seed':>4} {'plateau':>8} {'gain fc':>8} {'gain run':>9} "
        f"{'diminish':>9} {'agrees':>7}   (gain over the next {STEP} labels, "
        "or to the end of a smaller pool)"
    )
    for name, seed, plateau, gain, actual, diminishing, agrees in calls:
        shown = "-" if actual is None else f"{actual:+.3f}"
        print(
            f"{name:<10} {seed:>4} {plateau:>8.3f} {gain:>+8.3f} {shown:>9} "
            f"{diminishing!s:>9} {agrees!s:>7}"
        )
    judged = [c[-1] for c in calls if c[-1] is not None]
    if judged:
        print(f"diminishing-returns call agrees with the run in {sum(judged)} of {len(judged)}")


if __name__ == "__main__":
    main()
