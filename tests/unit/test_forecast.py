"""The forecast on synthetic power-law learning curves: small error, honest about plateaus."""

from __future__ import annotations

import numpy as np

from backend.diagnosis.forecast import forecast, labels_to_reach, power_law
from backend.diagnosis.schema import CurvePoint


def _curve(
    n: list[int], a: float, b: float, c: float, noise: float, seed: int = 0
) -> list[CurvePoint]:
    rng = np.random.default_rng(seed)
    acc = power_law(np.array(n, dtype=float), a, b, c) + rng.normal(0, noise, len(n))
    return [
        CurvePoint(
            version=f"v{i}",
            created_at="2026-01-01T00:00:00",
            n_labels=k,
            accuracy=float(v),
            macro_f1=float(v),
        )
        for i, (k, v) in enumerate(zip(n, acc, strict=True))
    ]


def test_labels_needed_on_a_noisy_power_law_are_close_to_the_truth() -> None:
    a, b, c = 0.95, 1.6, 0.5
    points = _curve([20, 40, 60, 80, 100], a, b, c, noise=0.004)
    result = forecast(points)
    assert result is not None and result.labels_now == 100
    assert abs(result.plateau - a) < 0.03
    errors = []
    for target in result.targets:
        truth = labels_to_reach(target.accuracy, a, b, c) - 100
        assert target.more_labels is not None and target.low is not None
        errors.append(abs(target.more_labels - truth) / (truth + 100))
        assert target.low <= target.more_labels
    assert max(errors) < 0.25  # relative to the total labels at the target
    assert not result.diminishing


def test_a_flat_curve_has_diminishing_returns() -> None:
    points = _curve([50, 100, 150, 200, 250], 0.9, 0.5, 1.5, noise=0.001)
    result = forecast(points)
    assert result is not None and result.diminishing and result.gain_next < 0.005


def test_too_few_points_give_no_forecast() -> None:
    assert forecast(_curve([20, 40], 0.9, 1.0, 0.5, noise=0.0)) is None
