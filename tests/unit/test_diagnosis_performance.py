"""Planted answers for per-class curves, confused pairs, the fit gap and the curve's labels."""

from __future__ import annotations

import numpy as np
import pytest

from backend.diagnosis.page import (
    PlotLabel,
    boxes_overlap,
    curve_plot,
    label_box,
    place_labels,
    spread,
    text_width,
)
from backend.diagnosis.performance import CURVE_POINTS, class_curves, confused_pairs, fit_gap
from backend.diagnosis.schema import CurvePoint


def test_a_separable_class_has_area_one_and_a_random_one_about_half() -> None:
    rng = np.random.default_rng(0)
    n = 400
    truth = np.zeros((n, 3), dtype=np.int64)
    truth[np.arange(n), rng.integers(0, 2, n)] = 1  # class 2 never given
    probs = np.column_stack((truth[:, 0] * 0.8 + 0.1, rng.random(n), rng.random(n)))
    curves = {c.name: c for c in class_curves(truth, probs, ("clean", "noise", "absent"))}
    assert set(curves) == {"clean", "noise"}  # no positives: no curve
    clean, noise = curves["clean"], curves["noise"]
    assert clean.average_precision == 1.0 and clean.roc_auc == 1.0
    assert abs(noise.roc_auc - 0.5) < 0.1
    assert clean.support == int(truth[:, 0].sum())
    for curve in (clean.pr, clean.roc, noise.pr, noise.roc):
        assert 2 <= len(curve) <= CURVE_POINTS
    assert clean.roc[0] == [0.0, 0.0] and clean.roc[-1] == [1.0, 1.0]
    assert [1.0, 1.0] in clean.pr  # full recall at full precision


def test_the_most_confused_pair_comes_first_with_its_most_confident_mistakes() -> None:
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10 + [-1])
    predicted = labels.copy()
    predicted[[10, 11, 12, 13]] = 2  # four "b" items called "c"
    predicted[25] = 1  # one "c" called "b"
    predicted[0] = 1  # one "a" called "b"
    confidence = np.full(len(labels), 0.6)
    confidence[12] = 0.95  # the most confident b -> c mistake
    probs = np.full((len(labels), 3), 0.0)
    probs[np.arange(len(labels)), np.maximum(predicted, 0)] = confidence
    probs += (1 - probs.sum(axis=1, keepdims=True)) / 3
    task_ids = np.arange(100, 100 + len(labels))
    pairs = confused_pairs(labels, probs, task_ids, ("a", "b", "c"))
    first = pairs[0]
    assert (first.a, first.b, first.a_as_b, first.b_as_a) == ("b", "c", 4, 1)
    assert first.share == pytest.approx(5 / 20)
    assert first.examples_a_as_b[0] == 112 and len(first.examples_a_as_b) == 3
    assert first.examples_b_as_a == [125]
    assert [(p.a, p.b) for p in pairs] == [("b", "c"), ("a", "b")]  # unconfused pairs left out


def _point(n: int, train: float | None, oos: float) -> CurvePoint:
    return CurvePoint(
        version=f"v{n}",
        created_at="2026-01-01T00:00:00",
        n_labels=n,
        accuracy=oos,
        macro_f1=oos,
        train_accuracy=train,
    )


def test_a_growing_train_gap_is_named_overfitting() -> None:
    growing = fit_gap([_point(20, 0.8, 0.75), _point(40, 1.0, 0.8)])
    assert growing is not None and growing.overfitting and growing.gap == pytest.approx(0.2)
    steady = fit_gap([_point(20, 0.95, 0.8), _point(40, 0.97, 0.82)])
    assert steady is not None and not steady.overfitting
    assert fit_gap([_point(20, None, 0.8)]) is None


def test_spread_keeps_labels_apart_and_inside() -> None:
    placed = spread([50.0, 52.0, 51.0], gap=14, lo=10, hi=200)
    assert sorted(np.diff(sorted(placed))) == pytest.approx([14, 14])
    assert all(10 <= y <= 200 for y in placed)
    crowded = spread([199.0, 199.5, 200.0], gap=14, lo=10, hi=200)
    assert max(crowded) <= 200 and min(np.diff(sorted(crowded))) >= 14 - 1e-9


def test_learning_curve_names_stay_inside_the_plot_and_apart() -> None:
    points = [_point(20, 0.9, 0.7), _point(60, 0.92, 0.91)]
    plot = curve_plot(points)
    ys = sorted(s.label.y for s in plot.series)
    assert len(plot.series) == 3 and min(np.diff(ys)) >= 14 - 1e-9
    for s in plot.series:
        left = s.label.x - (text_width(s.label.text) if s.anchor == "end" else 0)
        assert left >= 0 and left + text_width(s.label.text) <= plot.width
        assert plot.top <= s.label.y <= plot.height - plot.bottom


def test_map_names_never_overlap_and_stay_inside() -> None:
    crowded = [PlotLabel(380, 270, f"class number {i}", "#000") for i in range(12)]
    crowded.append(PlotLabel(5, 5, "at the corner", "#000"))
    placed = place_labels(crowded, width=760, height=540)
    boxes = [label_box(p, 14.0) for p in placed]
    for i, a in enumerate(boxes):
        assert a[0] >= 0 and a[1] >= 0 and a[2] <= 760 and a[3] <= 540
        assert not any(boxes_overlap(a, b) for b in boxes[i + 1 :])
    assert (placed[0].x, placed[0].y) == (380, 270)  # the first keeps its place
