"""How many labels are still worth making: an inverse power law ``acc(n) = a - b * n^-c`` fitted
to the learning curve (out-of-sample accuracy against labels, one point per model version), with
its uncertainty from refits on bootstrap resamples of the points.

Cross-validated accuracy is measured on the labels the strategies chose, which are the hard
items, so the curve runs below the model's accuracy on the pool. Once the newest model version
has been scored on at least :data:`AUDIT_MIN` audit items (uniform draws from the pool, predicted
out of sample), the curve is levelled by that version's audit-minus-cross-validated gap: its
shape comes from every version's cross-validated figure (many labels, smooth), its level from
the audit sample (unbiased for the pool).

From the fit: the accuracy the curve levels off at (``a``), the labels needed to reach a few
targets above today's accuracy (median and 80 % interval over the bootstrap fits; a target a fit
never reaches counts as out of reach), and "diminishing returns" when the next
:data:`STEP` labels are expected to add less than :data:`SMALL_GAIN`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import OptimizeWarning, curve_fit

from backend.diagnosis.schema import CurvePoint, Forecast, ForecastTarget

#: Distinct label counts the fit needs.
MIN_POINTS = 3
BOOTSTRAP = 200
#: Labels looked ahead for "diminishing returns", and the gain below which they are.
STEP = 100
SMALL_GAIN = 0.005
#: Percentage points above today's accuracy the targets sit at (capped below the plateau).
TARGET_STEPS = (0.01, 0.02, 0.05)
#: Labels beyond which a target counts as out of reach.
HORIZON = 1_000_000
#: Audit items the newest version needs before they level the curve (fewer: an interval of
#: about +-15 points, wider than the bias it would correct).
AUDIT_MIN = 30


def power_law(n: NDArray[np.float64], a: float, b: float, c: float) -> NDArray[np.float64]:
    return a - b * np.power(n, -c)


def fit(n: NDArray[np.float64], acc: NDArray[np.float64]) -> tuple[float, float, float] | None:
    """(a, b, c) least-squares fit with a in [0, 1], b >= 0, c in [0.05, 2]; None if it fails."""
    start = (min(1.0, float(acc.max()) + 0.02), max(1e-3, float(acc.max() - acc.min()) + 0.1), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                power_law,
                n,
                acc,
                p0=start,
                bounds=([0.0, 0.0, 0.05], [1.0, 1e4, 2.0]),
                maxfev=5000,
            )
    except (RuntimeError, ValueError):
        return None
    a, b, c = (float(v) for v in params)
    return a, b, c


def labels_to_reach(target: float, a: float, b: float, c: float) -> float:
    """Labels at which the fitted curve reaches ``target`` (inf when it levels off below it)."""
    if target >= a or b <= 0:
        return float("inf")
    return float((b / (a - target)) ** (1.0 / c))


def _bootstrap_fits(
    n: NDArray[np.float64], acc: NDArray[np.float64], rng: np.random.Generator
) -> list[tuple[float, float, float]]:
    fits = []
    for _ in range(BOOTSTRAP):
        rows = rng.integers(0, len(n), len(n))
        if len(np.unique(n[rows])) >= MIN_POINTS:
            refit = fit(n[rows], acc[rows])
            if refit is not None:
                fits.append(refit)
    return fits


def _target(
    target: float,
    best: tuple[float, float, float],
    fits: Sequence[tuple[float, float, float]],
    now: float,
) -> ForecastTarget:
    """Labels beyond ``now`` to reach ``target``: the best fit's and the refits' 10-90 %."""
    needed = np.array([labels_to_reach(target, *f) for f in fits or [best]])
    finite = needed[np.isfinite(needed) & (needed <= HORIZON)]
    median = labels_to_reach(target, *best)

    def beyond(value: float) -> int:
        return max(0, round(value - now))

    return ForecastTarget(
        accuracy=target,
        more_labels=beyond(median) if np.isfinite(median) else None,
        low=beyond(float(np.quantile(finite, 0.1))) if len(finite) else None,
        high=beyond(float(np.quantile(finite, 0.9))) if len(finite) >= 0.9 * len(needed) else None,
        reachable_share=round(len(finite) / len(needed), 3),
    )


def audit_offset(points: Sequence[CurvePoint]) -> tuple[float, int] | None:
    """(audit minus cross-validated accuracy, audit items) of the newest version scored on at
    least :data:`AUDIT_MIN` audit items; None when there is none."""
    scored = [
        (p.n_labels, p.audit_accuracy - p.accuracy, p.audit_n)
        for p in points
        if p.accuracy is not None
        and p.audit_accuracy is not None
        and p.audit_n is not None
        and p.audit_n >= AUDIT_MIN
    ]
    if not scored:
        return None
    _, offset, count = max(scored)
    return offset, count


def forecast(points: Sequence[CurvePoint], *, seed: int = 0) -> Forecast | None:
    """The fitted curve's plateau, labels to reach a few targets, and diminishing returns."""
    pairs = [(p.n_labels, p.accuracy) for p in points if p.accuracy is not None and p.n_labels > 0]
    n = np.array([x for x, _ in pairs], dtype=np.float64)
    acc = np.array([y for _, y in pairs], dtype=np.float64)
    if len(np.unique(n)) < MIN_POINTS:
        return None
    levelled = audit_offset(points)
    if levelled is not None:
        acc = np.clip(acc + levelled[0], 0.0, 1.0)
    best = fit(n, acc)
    if best is None:
        return None
    fits = _bootstrap_fits(n, acc, np.random.default_rng(seed))
    a, b, c = best
    now = float(n.max())
    current = float(power_law(np.array([now]), a, b, c)[0])
    gain = float(power_law(np.array([now + STEP]), a, b, c)[0]) - current
    wanted = sorted({round(min(current + step, a - 0.002), 4) for step in TARGET_STEPS})
    plateaus = np.array([f[0] for f in fits]) if fits else np.array([a])
    return Forecast(
        n_points=len(n),
        plateau=round(a, 4),
        plateau_low=round(float(np.quantile(plateaus, 0.1)), 4),
        plateau_high=round(float(np.quantile(plateaus, 0.9)), 4),
        b=round(b, 6),
        c=round(c, 4),
        labels_now=int(now),
        fitted_now=round(current, 4),
        gain_next=round(gain, 4),
        step=STEP,
        diminishing=gain < SMALL_GAIN,
        targets=[_target(t, best, fits, now) for t in wanted if t > current],
        basis="cross-validated" if levelled is None else "audit",
        audit_offset=None if levelled is None else round(levelled[0], 4),
        audit_n=None if levelled is None else levelled[1],
    )
