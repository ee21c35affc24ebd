"""The dashboard page: Jinja templates (autoescaped) with inline SVG plots, no JavaScript.

Python computes the plots' geometry (positions, colours, tooltips) into small frozen dataclasses;
the templates in ``templates/`` only place them. Everything users wrote (class names, reasons,
versions) reaches the page through Jinja's autoescaping. Plots label their marks directly (class
names at class centroids, series names at line ends) so no legend is needed.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from numpy.typing import NDArray

from backend.diagnosis.schema import (
    ClassCurve,
    Confusion,
    CurvePoint,
    Diagnosis,
    EmbeddingMap,
    TaskExplanation,
)
from backend.diagnosis.view import task_link, thumb_url

#: Okabe-Ito and Tableau colours, distinguishable for most colour-vision deficiencies first.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#8C564B",
    "#7F7F7F",
    "#17BECF",
)
UNLABELED_COLOR = "#B8B8B8"


@dataclass(frozen=True)
class Section:
    """One section of the page: its anchor id, heading and template (under ``sections/``)."""

    id: str
    title: str


#: The page's sections, top to bottom; each renders ``templates/sections/<id>.html``.
SECTIONS = (
    Section("drift", "Drift of new data"),
    Section("classification", "Confusion and per-class scores"),
    Section("label-errors", "Label-error candidates"),
    Section("class-curves", "Per-class precision-recall and ROC"),
    Section("confused-pairs", "Most confused class pairs"),
    Section("map", "Embedding map"),
    Section("distribution", "Class distribution"),
    Section("duplicates", "Duplicates"),
    Section("image-quality", "Image quality"),
    Section("slices", "Slices"),
    Section("coverage", "Under-covered clusters"),
    Section("outliers", "Outliers"),
    Section("curve", "Learning curve"),
    Section("selection", "Selection and audit accuracy"),
    Section("forecast", "Forecast: are more labels worth it?"),
)


def class_color(index: int) -> str:
    """A stable colour per class: the palette, then evenly spread hues."""
    if index < 0:
        return UNLABELED_COLOR
    if index < len(PALETTE):
        return PALETTE[index]
    r, g, b = colorsys.hls_to_rgb((index * 0.618034) % 1.0, 0.45, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def environment() -> Environment:
    """A Jinja environment for the pages (templates are package data, autoescaped)."""
    env = Environment(
        loader=PackageLoader("backend.diagnosis", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=pct, num=num, color=class_color)
    return env


# ---------------------------------------------------------------- confusion matrix


@dataclass(frozen=True)
class MatrixCell:
    i: int
    j: int
    x: float
    y: float
    count: int
    fill: str
    ink: str
    tip: str


@dataclass(frozen=True)
class MatrixPlot:
    """Heatmap: rows = given label, columns = predicted; colour = row share, number = count."""

    cells: list[MatrixCell]
    names: list[str]
    size: int
    width: int
    height: int
    pad_left: int = 130
    pad_top: int = 120

    @property
    def font_size(self) -> int:
        return min(13, self.size // 3)


def matrix_plot(confusion: Confusion, names: Sequence[str]) -> MatrixPlot:
    n = len(names)
    size = int(max(26, min(60, 480 / max(n, 1))))
    cells = []
    for i in range(n):
        for j in range(n):
            count, share = int(confusion.counts[i][j]), float(confusion.normalized[i][j])
            shade = int(255 - 200 * share)
            tip = f"given {names[i]}, predicted {names[j]}: {count} ({share:.0%} of {names[i]})"
            cells.append(
                MatrixCell(
                    i,
                    j,
                    j * size,
                    i * size,
                    count,
                    f"rgb({shade},{shade + int(20 * share)},255)",
                    "#fff" if share > 0.5 else "#111",
                    tip,
                )
            )
    return MatrixPlot(
        cells, [name[:18] for name in names], size, 130 + n * size + 10, 130 + n * size
    )


# ---------------------------------------------------------------- distribution


@dataclass(frozen=True)
class Bar:
    name: str
    count: int
    y: float
    width: float
    color: str


@dataclass(frozen=True)
class BarPlot:
    """Horizontal bars, one per class, count at the bar's end."""

    bars: list[Bar]
    width: int
    height: int
    left: int = 140


def bar_plot(counts: dict[str, int]) -> BarPlot:
    top = max(counts.values(), default=0) or 1
    bar_w, row_h, left = 320, 22, 140
    bars = [
        Bar(name[:20], c, i * row_h, round(bar_w * c / top, 1), class_color(i))
        for i, (name, c) in enumerate(counts.items())
    ]
    return BarPlot(bars, left + bar_w + 60, row_h * len(counts) + 6, left)


# ---------------------------------------------------------------- embedding map


def scale(values: NDArray[np.float64], lo: float, hi: float) -> NDArray[np.float64]:
    """``values`` mapped linearly onto [lo, hi] (all to the middle when they are all equal)."""
    span = float(values.max() - values.min()) if len(values) else 0.0
    if span == 0.0:
        return np.full(len(values), (lo + hi) / 2)
    scaled: NDArray[np.float64] = lo + (values - values.min()) / span * (hi - lo)
    return scaled


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    r: float
    color: str


@dataclass(frozen=True)
class Mark:
    x: float
    y: float
    task: int


@dataclass(frozen=True)
class PlotLabel:
    x: float
    y: float
    text: str
    color: str


@dataclass(frozen=True)
class MapPlot:
    """Scatter of the 2-D projection: colour = label (grey = unlabeled), a red cross = label-error
    candidate, a diamond = outlier, class names at the median of their labeled points."""

    dots: list[Dot]
    errors: list[Mark]
    outliers: list[Mark]
    labels: list[PlotLabel]
    width: int
    height: int


def map_plot(m: EmbeddingMap, names: Sequence[str], width: int = 760, height: int = 540) -> MapPlot:
    xs = scale(np.asarray(m.x, dtype=float), 12, width - 12)
    ys = scale(-np.asarray(m.y, dtype=float), 12, height - 12)
    labels = np.asarray(m.label, dtype=np.int64)
    order = np.argsort(labels >= 0, kind="stable")  # unlabeled first, underneath
    colors = {c: class_color(c) for c in np.unique(labels).tolist()}
    dots = [
        Dot(x, y, 2.6 if c >= 0 else 1.8, colors[c])
        for x, y, c in zip(
            np.round(xs[order], 1).tolist(),
            np.round(ys[order], 1).tolist(),
            labels[order].tolist(),
            strict=True,
        )
    ]

    def marks(flags: list[int]) -> list[Mark]:
        rows = np.flatnonzero(np.asarray(flags, dtype=bool))
        return [Mark(round(xs[i], 1), round(ys[i], 1), int(m.task[i])) for i in rows]

    wanted = []
    for c, name in enumerate(names):
        members = labels == c
        if members.any():  # the median is robust to mislabeled points
            x, y = float(np.median(xs[members])), float(np.median(ys[members]))
            wanted.append((int(members.sum()), PlotLabel(x, y - 10, name[:24], class_color(c))))
    # Larger classes place their names first; the others move aside where they would overlap.
    wanted.sort(key=lambda item: -item[0])
    names_at = place_labels([label for _, label in wanted], width=width, height=height)
    return MapPlot(dots, marks(m.error), marks(m.outlier), names_at, width, height)


#: Offsets (px) tried, nearest first, when a name would overlap one already placed.
NUDGES = tuple(
    (dx, dy)
    for r in range(1, 8)
    for dx, dy in (
        (0, -16 * r),
        (0, 16 * r),
        (-40 * r, 0),
        (40 * r, 0),
        (-30 * r, -16 * r),
        (30 * r, -16 * r),
        (-30 * r, 16 * r),
        (30 * r, 16 * r),
    )
)


def label_box(label: PlotLabel, size: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a middle-anchored text at its baseline."""
    half = text_width(label.text, size) / 2
    return label.x - half, label.y - size, label.x + half, label.y + 3


def boxes_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    labels: Sequence[PlotLabel], *, width: int, height: int, size: float = 14.0
) -> list[PlotLabel]:
    """Labels moved (nearest free offset first) so that none overlaps another or leaves the
    plot; a label with no free spot keeps its place (inside the plot)."""
    placed: list[PlotLabel] = []
    boxes: list[tuple[float, float, float, float]] = []
    for label in labels:
        choice = None
        for dx, dy in ((0.0, 0.0), *NUDGES):
            moved = PlotLabel(label.x + dx, label.y + dy, label.text, label.color)
            box = label_box(moved, size)
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
            if inside and not any(boxes_overlap(box, other) for other in boxes):
                choice = moved
                break
        if choice is None:
            half = text_width(label.text, size) / 2
            x = min(max(label.x, half), width - half)
            choice = PlotLabel(x, min(max(label.y, size), height - 3), label.text, label.color)
        placed.append(PlotLabel(round(choice.x, 1), round(choice.y, 1), choice.text, choice.color))
        boxes.append(label_box(choice, size))
    return placed


# ---------------------------------------------------------------- learning curve


def text_width(text: str, size: float = 12.0) -> float:
    """Estimated width of bold system-ui text (about 0.62 em per character)."""
    return 0.62 * size * len(text)


def spread(ys: Sequence[float], *, gap: float, lo: float, hi: float) -> list[float]:
    """Positions at least ``gap`` apart, each as close to its ``ys`` as that allows, within
    [lo, hi] (when they all fit)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [0.0] * len(ys)
    floor = lo - gap
    for i in order:
        placed[i] = floor = max(min(ys[i], hi), floor + gap)
    ceiling = hi + gap
    for i in reversed(order):
        placed[i] = ceiling = min(placed[i], ceiling - gap)
    return placed


@dataclass(frozen=True)
class Series:
    """One line: its points, and its name and last value at its end."""

    points: list[tuple[float, float]]
    color: str
    label: PlotLabel
    dashed: bool = False
    anchor: str = "start"

    @property
    def polyline(self) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in self.points)


@dataclass(frozen=True)
class CurvePlot:
    """Accuracy, macro F1 and training accuracy against labels used, one line each, named at
    their last point inside the plot."""

    series: list[Series]
    x_ticks: list[PlotLabel]
    y_ticks: list[PlotLabel]
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int


#: (field, colour, name, dashed).
CURVE_SERIES = (
    ("accuracy", "#0072B2", "accuracy", False),
    ("macro_f1", "#D55E00", "F1", False),
    ("train_accuracy", "#555555", "training accuracy", True),
)


def curve_plot(points: Sequence[CurvePoint], width: int = 560, height: int = 300) -> CurvePlot:
    left, bottom, top, right = 44, 34, 12, 110
    span = height - top - bottom
    xs = np.array([p.n_labels for p in points], dtype=float)
    px = scale(xs, left, width - right) if len(xs) > 1 else np.full(len(xs), float(left))
    lines = []
    for key, color, name, dashed in CURVE_SERIES:
        values = [(float(x), getattr(p, key)) for x, p in zip(px, points, strict=True)]
        xy = [(x, top + (1 - float(v)) * span) for x, v in values if v is not None]
        if xy:
            last = next(v for _, v in reversed(values) if v is not None)
            lines.append((xy, color, f"{name} {last:.2f}", dashed))
    # Names at the line ends, spread vertically so they never overprint, and kept inside the
    # drawing: to the right of the last point when they fit there, else to its left.
    ys = spread([xy[-1][1] + 4 for xy, *_ in lines], gap=14, lo=top + 10, hi=height - bottom - 4)
    series = []
    for (xy, color, text, dashed), y in zip(lines, ys, strict=True):
        x_end = xy[-1][0]
        fits = x_end + 8 + text_width(text) <= width - 2
        x, anchor = (x_end + 8, "start") if fits else (x_end - 8, "end")
        series.append(Series(xy, color, PlotLabel(x, y, text, color), dashed, anchor))
    y_ticks = [
        PlotLabel(left - 6, round(top + (1 - v) * span + 4, 1), f"{v:.1f}", "#222")
        for v in (0.0, 0.5, 1.0)
    ]
    x_ticks = [
        PlotLabel(round(x, 1), height - bottom + 16, str(int(n)), "#222")
        for x, n in zip(px, xs, strict=True)
    ]
    return CurvePlot(series, x_ticks, y_ticks, width, height, left, right, top, bottom)


# ---------------------------------------------------------------- per-class curves


@dataclass(frozen=True)
class Sparkline:
    """A small square plot of one curve: its polyline in a unit box drawn at ``size`` px."""

    points: str
    size: int
    diagonal: bool


def sparkline(xy: Sequence[Sequence[float]], *, size: int = 72, diagonal: bool) -> Sparkline:
    pad = 2
    points = " ".join(
        f"{pad + x * (size - 2 * pad):.1f},{pad + (1 - y) * (size - 2 * pad):.1f}" for x, y in xy
    )
    return Sparkline(points, size, diagonal)


@dataclass(frozen=True)
class CurveRow:
    curve: ClassCurve
    color: str
    pr: Sparkline
    roc: Sparkline


def curve_rows(curves: Sequence[ClassCurve]) -> list[CurveRow]:
    """Worst average precision first: the classes that need attention lead."""
    ordered = sorted(curves, key=lambda c: (c.average_precision, c.name))
    return [
        CurveRow(
            c,
            class_color(c.index),
            sparkline(c.pr, diagonal=False),
            sparkline(c.roc, diagonal=True),
        )
        for c in ordered
    ]


# ---------------------------------------------------------------- the pages


def plots(diagnosis: Diagnosis) -> dict[str, Any]:
    """The geometry of every plot on the page (None where a section has nothing to draw)."""
    result = diagnosis.classification
    return {
        "matrix": matrix_plot(result.confusion, diagnosis.classes) if result else None,
        "bars": bar_plot(diagnosis.distribution.counts),
        "map": map_plot(diagnosis.map, diagnosis.classes),
        "curve": curve_plot(diagnosis.learning_curve) if diagnosis.learning_curve else None,
        "class_curves": curve_rows(diagnosis.class_curves),
    }


@dataclass(frozen=True)
class Links:
    """Task links for the templates (the same URLs as the JSON's ``ls_url`` and ``thumbnail``)."""

    browser_url: str
    project_id: int

    def task(self, task_id: int) -> str:
        return task_link(self.browser_url, self.project_id, task_id)

    def thumb(self, task_id: int) -> str:
        return thumb_url(self.project_id, task_id)


class Pages:
    """The dashboard's pages, rendered from one Jinja environment kept by its owner (the app's
    services), which caches the compiled templates."""

    def __init__(self) -> None:
        self._env = environment()

    def dashboard(self, diagnosis: Diagnosis, project_id: int) -> str:
        """The whole dashboard page for one project."""
        return self._env.get_template("dashboard.html").render(
            d=diagnosis,
            project_id=project_id,
            sections=SECTIONS,
            plots=plots(diagnosis),
            links=Links(diagnosis.label_studio_url or "", project_id),
        )

    def not_yet(
        self, project_id: int, *, known: bool, status: dict[str, Any], when: list[str]
    ) -> str:
        """The page before a project's first diagnosis: what will appear, and when.

        Args:
            project_id: the Label Studio project.
            known: whether labelloop has seen the project (synced or connected) at all.
            status: the project's loop now
                (:meth:`backend.store.cycle_records.CycleStatus.to_dict`).
            when: sentences naming what starts the first cycle.
        """
        return self._env.get_template("not_yet.html").render(
            project_id=project_id, known=known, status=status, when=when, sections=SECTIONS
        )

    def explanation(self, info: TaskExplanation, project_id: int, links: Links) -> str:
        """The per-task explanation page."""
        return self._env.get_template("explain.html").render(
            e=info, project_id=project_id, links=links
        )
