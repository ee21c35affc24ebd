"""The forecast on synthetic power-law learning curves: small error, honest about plateaus."""

from __future__ import annotations

import numpy as np

from backend.diagnosis.forecast import forecast, labels_to_reach, power_law
from backend.diagnosis.schema import CurvePoint
from backend.diagnosis.view import learning_curve
from backend.store.db import Store
from backend.store.models import Cycle, ModelVersion, Project


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


def test_the_audit_sample_levels_a_curve_measured_on_hard_items() -> None:
    """Cross-validated accuracy on the chosen (hard) labels runs 6 points below the pool's; once
    the newest version has enough audit items the plateau moves up by their gap, not before."""
    a, b, c = 0.95, 1.6, 0.5
    truth = _curve([20, 40, 60, 80, 100], a, b, c, noise=0.0)
    hard = [p.model_copy(update={"accuracy": (p.accuracy or 0) - 0.06}) for p in truth]
    plain = forecast(hard)
    assert plain is not None and plain.basis == "cross-validated" and plain.audit_offset is None
    few = [
        *hard[:-1],
        hard[-1].model_copy(update={"audit_accuracy": truth[-1].accuracy, "audit_n": 12}),
    ]
    assert forecast(few) == plain  # 12 audit items are too few to move the level
    audited = [
        *hard[:-1],
        hard[-1].model_copy(update={"audit_accuracy": truth[-1].accuracy, "audit_n": 60}),
    ]
    levelled = forecast(audited)
    assert levelled is not None and levelled.basis == "audit" and levelled.audit_n == 60
    assert levelled.audit_offset is not None and abs(levelled.audit_offset - 0.06) < 1e-9
    assert abs(levelled.plateau - a) < 0.01 and abs(plain.plateau - (a - 0.06)) < 0.01


def test_the_learning_curve_carries_each_versions_audit_accuracy(store: Store) -> None:
    """The audit figure of a version is the one its own cycle measured; a version whose cycle
    had no audit labels yet (or failed) has none."""
    estimate = {
        "n": 40,
        "correct": 34,
        "accuracy": 0.85,
        "low": 0.74,
        "high": 0.92,
        "confidence": 0.9,
    }
    with store.session() as session:
        session.add(Project(id=3, title="p"))
        session.flush()
        for i, version in enumerate(("p3-a", "p3-b", "p3-c")):
            session.add(
                ModelVersion(
                    project_id=3, version=version, path="-", backbone="b", n_labels=20 * (i + 1),
                    metrics={"accuracy": 0.7 + 0.05 * i},
                )
            )  # fmt: skip
        session.add_all(
            [
                Cycle(project_id=3, trigger="t", state="succeeded", model_version="p3-a",
                      metrics={"audit_accuracy_crossfit": None}),
                Cycle(project_id=3, trigger="t", state="failed", model_version="p3-b",
                      metrics={"audit_accuracy_crossfit": {**estimate, "accuracy": 0.1}}),
                Cycle(project_id=3, trigger="t", state="succeeded", model_version="p3-c",
                      metrics={"audit_accuracy_crossfit": estimate}),
            ]
        )  # fmt: skip
    curve = learning_curve(store, 3)
    assert [(p.version, p.audit_accuracy, p.audit_n) for p in curve] == [
        ("p3-a", None, None),
        ("p3-b", None, None),
        ("p3-c", 0.85, 40),
    ]
    levelled = forecast(curve)
    assert levelled is not None and levelled.basis == "audit"
    assert levelled.audit_offset is not None and abs(levelled.audit_offset - (0.85 - 0.8)) < 1e-9
