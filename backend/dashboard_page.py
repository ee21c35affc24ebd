"""The dashboard page: server-rendered HTML with inline SVG plots, no JavaScript.

Input is the dict :func:`backend.diagnostics.diagnosis_view` returns. Every piece of text that came
from users (class names, reasons, versions) goes through :func:`esc`. Plots label their marks
directly (class names at class centroids, series names at line ends) so no legend is needed.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

import numpy as np

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

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}.grid{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table{border-collapse:collapse}td,th{padding:4px 8px;border-bottom:1px solid #eee;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.thumb{width:64px;height:64px;object-fit:cover;border:1px solid #ccc;vertical-align:middle}
.warning{background:#fff3cd;border:2px solid #d39e00;padding:10px;font-weight:600}
.ok{background:#e8f5e9;border:1px solid #81c784;padding:10px}
.note{color:#666;font-size:13px}svg text{font-family:system-ui,sans-serif}
.halo{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
"""


def esc(value: Any) -> str:
    """HTML-escape any value's text (quotes too, so it is safe inside attributes)."""
    return escape(str(value), quote=True)


def class_color(index: int) -> str:
    """A stable colour per class: the palette, then evenly spread hues."""
    if index < 0:
        return UNLABELED_COLOR
    if index < len(PALETTE):
        return PALETTE[index]
    r, g, b = colorsys.hls_to_rgb((index * 0.618034) % 1.0, 0.45, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    """A table; ``head`` entries starting with '#' are right-aligned numeric columns."""
    numeric = [h.startswith("#") for h in head]
    ths = "".join(
        f'<th class="{"num" if n else ""}">{esc(h.lstrip("#"))}</th>'
        for h, n in zip(head, numeric, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if n else ""}">{cell}</td>'
            for cell, n in zip(row, numeric, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="{css}"><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------- confusion matrix


def _cm_cell(i: int, j: int, count: int, share: float, size: int, names: Sequence[str]) -> str:
    x, y = j * size, i * size
    shade = int(255 - 200 * share)
    fill = f"rgb({shade},{shade + int(20 * share)},255)"
    ink = "#fff" if share > 0.5 else "#111"
    tip = f"given {names[i]}, predicted {names[j]}: {count} ({share:.0%} of {names[i]})"
    return (
        f'<g class="cm-cell" data-true="{i}" data-pred="{j}" data-count="{count}">'
        f'<rect x="{x}" y="{y}" width="{size}" height="{size}" fill="{fill}" stroke="#fff"/>'
        f'<text x="{x + size / 2}" y="{y + size / 2 + 4}" text-anchor="middle" fill="{ink}" '
        f'font-size="{min(13, size // 3)}">{count}</text><title>{esc(tip)}</title></g>'
    )


def confusion_svg(
    counts: Sequence[Sequence[int]], normalized: Sequence[Sequence[float]], names: Sequence[str]
) -> str:
    """Heatmap: rows = given label, columns = predicted; colour = row share, number = count."""
    n = len(names)
    size = int(max(26, min(60, 480 / max(n, 1))))
    pad_left, pad_top = 130, 120
    cells = "".join(
        _cm_cell(i, j, int(counts[i][j]), float(normalized[i][j]), size, names)
        for i in range(n)
        for j in range(n)
    )
    rows = "".join(
        f'<text x="-6" y="{i * size + size / 2 + 4}" text-anchor="end">{esc(name[:18])}</text>'
        for i, name in enumerate(names)
    )
    cols = "".join(
        f'<text transform="translate({j * size + size / 2 + 4},-6) rotate(-55)">'
        f"{esc(name[:18])}</text>"
        for j, name in enumerate(names)
    )
    width, height = pad_left + n * size + 10, pad_top + n * size + 10
    return (
        f'<svg id="confusion" width="{width}" height="{height}" role="img" '
        f'aria-label="confusion matrix"><g transform="translate({pad_left},{pad_top})">'
        f'{cells}<g font-size="12">{rows}{cols}</g>'
        f'<text x="{n * size / 2}" y="-100" text-anchor="middle" font-weight="600">predicted</text>'
        f'<text transform="translate(-120,{n * size / 2}) rotate(-90)" text-anchor="middle" '
        f'font-weight="600">given label</text></g></svg>'
    )


def classification_section(diag: dict[str, Any]) -> str:
    result = diag.get("classification")
    names = diag["classes"]
    if result is None:
        per_class = diag.get("per_class")
        if not per_class:
            return '<p class="note">No model yet (cold start): labels are still too few.</p>'
        return _per_class_table(per_class)
    matrix = confusion_svg(result["confusion"]["counts"], result["confusion"]["normalized"], names)
    summary = (
        f"<p>Out-of-sample accuracy <b>{_pct(result['accuracy'])}</b>, macro F1 "
        f"<b>{_num(result['macro_f1'])}</b> (cross-fitted: no item is scored by a model that saw "
        "its label).</p>"
    )
    return f'{summary}<div class="grid">{matrix}{_per_class_table(result["per_class"])}</div>'


def _per_class_table(per_class: dict[str, dict[str, float]]) -> str:
    rows = [
        (
            esc(name),
            _num(m["precision"]),
            _num(m["recall"]),
            _num(m["f1"]),
            str(int(m["support"])),
        )
        for name, m in per_class.items()
    ]
    return _table(("class", "#precision", "#recall", "#F1", "#support"), rows, "per-class")


# ---------------------------------------------------------------- distribution


def distribution_svg(counts: dict[str, int]) -> str:
    """Horizontal bars, one per class, count at the bar's end."""
    top = max(counts.values(), default=0) or 1
    bar_w, row_h, left = 320, 22, 140
    bars = "".join(
        f'<g transform="translate(0,{i * row_h})">'
        f'<text x="{left - 6}" y="15" text-anchor="end">{esc(name[:20])}</text>'
        f'<rect x="{left}" y="3" width="{bar_w * c / top:.1f}" height="15" '
        f'fill="{class_color(i)}"/>'
        f'<text x="{left + bar_w * c / top + 4:.1f}" y="15">{c}</text></g>'
        for i, (name, c) in enumerate(counts.items())
    )
    height = row_h * len(counts) + 6
    return (
        f'<svg id="distribution" width="{left + bar_w + 60}" height="{height}" '
        f'font-size="12" role="img" aria-label="labels per class">{bars}</svg>'
    )


def distribution_section(diag: dict[str, Any]) -> str:
    dist = diag["distribution"]
    ratio = dist["imbalance"]
    text = f"Imbalance ratio (largest / smallest class): <b>{_num(ratio, 1)}</b>."
    if dist["empty"]:
        text += f" Classes without any label: {esc(', '.join(dist['empty']))}."
    return f"<p>{text}</p>{distribution_svg(dist['counts'])}"


# ---------------------------------------------------------------- tables with thumbnails


def _thumb_link(row: dict[str, Any]) -> str:
    return (
        f'<a class="ls-link" href="{esc(row["ls_url"])}" target="_blank" rel="noopener" '
        f'data-task="{int(row["task"])}"><img class="thumb" loading="lazy" alt="task '
        f'{int(row["task"])}" src="{esc(row["thumbnail"])}"> {int(row["task"])}</a>'
    )


def errors_section(diag: dict[str, Any]) -> str:
    errors = diag["label_errors"]
    reviewed = int(diag.get("label_errors_reviewed") or 0)
    kept = (
        f'<p class="note">{reviewed} more the model doubts were already reviewed in Label Studio '
        "and are not listed again.</p>"
        if reviewed
        else ""
    )
    if not errors:
        if diag.get("phase") == "cold_start":
            return '<p class="note">Needs a model: label-error candidates come from it.</p>'
        return '<p class="ok">No labeled item looks mislabeled to the model.</p>' + kept
    rows = [
        (
            _thumb_link(e),
            esc(e["given"]),
            f"{esc(e['model'])} ({_pct(e['confidence'])})",
            esc(e["reason"]),
        )
        for e in errors
    ]
    head = ("task (opens Label Studio)", "given label", "model says", "why")
    return _table(head, rows, "label-errors") + kept


def outliers_section(diag: dict[str, Any]) -> str:
    rows = [
        (_thumb_link(o), _num(o["score"], 2), str(o["cluster"]), esc(o["label"] or "unlabeled"))
        for o in diag["outliers"]
    ]
    if not rows:
        return '<p class="ok">No item lies far from its cluster.</p>'
    note = (
        '<p class="note">Outlier score: distance to the cluster centre over the median distance '
        "in that cluster.</p>"
    )
    return note + _table(("task", "#outlier score", "#cluster", "label"), rows, "outliers")


def coverage_section(diag: dict[str, Any], project_id: int) -> str:
    cov = diag["coverage"]
    if not cov["under_covered"]:
        return f'<p class="ok">All {cov["n_clusters"]} clusters have their share of labels.</p>'

    def examples(row: dict[str, Any]) -> str:
        return "".join(
            f'<a href="{esc(link)}" target="_blank" rel="noopener"><img class="thumb" '
            f'loading="lazy" alt="task {int(t)}" src="/dashboard/{project_id}/thumb/{int(t)}.png">'
            "</a>"
            for t, link in zip(row["examples"], row["example_links"], strict=True)
        )

    rows = [
        (
            str(r["cluster"]),
            str(r["size"]),
            str(r["labeled"]),
            _pct(r["share"]),
            _num(r["under_coverage"], 2),
            examples(r),
        )
        for r in cov["under_covered"]
    ]
    head = ("#cluster", "#items", "#labeled", "#labeled share", "#under-coverage", "examples")
    note = (
        f'<p class="note">{cov["n_clusters"]} clusters; under-coverage 1 = labels spread evenly, '
        "above 1 = fewer labels than the cluster's size deserves.</p>"
    )
    return note + _table(head, rows, "coverage")


# ---------------------------------------------------------------- embedding map


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = float(values.max() - values.min()) if len(values) else 0.0
    if span == 0.0:
        return np.full(len(values), (lo + hi) / 2)
    return lo + (values - values.min()) / span * (hi - lo)


def _map_marks(xs: np.ndarray, ys: np.ndarray, m: dict[str, Any], names: Sequence[str]) -> str:
    parts = []
    for i in np.flatnonzero(np.asarray(m["error"], dtype=bool)):
        x, y, t = xs[i], ys[i], int(m["task"][i])
        parts.append(
            f'<path class="mark-error" d="M{x - 5:.1f},{y - 5:.1f}l10,10m0,-10l-10,10" '
            f'stroke="#C00" stroke-width="2.5"><title>task {t}: label-error candidate</title>'
            "</path>"
        )
    for i in np.flatnonzero(np.asarray(m["outlier"], dtype=bool)):
        x, y, t = xs[i], ys[i], int(m["task"][i])
        parts.append(
            f'<path class="mark-outlier" d="M{x:.1f},{y - 6:.1f}l6,6l-6,6l-6,-6z" fill="none" '
            f'stroke="#000" stroke-width="1.5"><title>task {t}: outlier</title></path>'
        )
    labels = np.asarray(m["label"], dtype=np.int64)
    for c, name in enumerate(names):
        members = labels == c
        if members.any():
            x, y = np.median(xs[members]), np.median(ys[members])  # robust to mislabeled points
            parts.append(
                f'<text class="halo" x="{x:.1f}" y="{y - 10:.1f}" '
                f'text-anchor="middle" font-weight="700" fill="{class_color(c)}">'
                f"{esc(name[:24])}</text>"
            )
    return "".join(parts)


def map_svg(m: dict[str, Any], names: Sequence[str], width: int = 760, height: int = 540) -> str:
    """Scatter of the 2-D projection: colour = label (grey = unlabeled), a red cross = label-error
    candidate, a diamond = outlier, class names at the centroid of their labeled points."""
    xs = _scale(np.asarray(m["x"], dtype=float), 12, width - 12)
    ys = _scale(-np.asarray(m["y"], dtype=float), 12, height - 12)
    labels = np.asarray(m["label"], dtype=np.int64)
    order = np.argsort(labels >= 0, kind="stable")  # unlabeled first, underneath
    dots = "".join(
        f'<circle cx="{xs[i]:.1f}" cy="{ys[i]:.1f}" r="{2.6 if labels[i] >= 0 else 1.8}" '
        f'fill="{class_color(int(labels[i]))}"/>'
        for i in order
    )
    return (
        f'<svg id="map" width="{width}" height="{height}" role="img" aria-label="embedding map" '
        f'style="border:1px solid #ddd"><g fill-opacity="0.75">{dots}</g>'
        f"{_map_marks(xs, ys, m, names)}</svg>"
    )


def map_section(diag: dict[str, Any]) -> str:
    m = diag["map"]
    shown, total = len(m["task"]), m["n_total"]
    ev = sum(m["explained_variance"])
    note = (
        f'<p class="note">PCA of the embeddings ({_pct(ev)} of the variance), {shown:,} of '
        f"{total:,} items shown. Colour = label (grey = unlabeled); class names sit at the median "
        "of their labeled points; <b style='color:#C00'>&times;</b> label-error candidate; "
        "&#9671; outlier. Hover a mark for its task.</p>"
    )
    return note + map_svg(m, diag["classes"])


# ---------------------------------------------------------------- learning curve and drift


def _series(
    px: np.ndarray,
    values: Sequence[float | None],
    style: tuple[str, str, float],
    top: float,
    span: float,
) -> str:
    """One line of the learning curve, its points, and its name and last value at its end.

    ``style`` is (colour, name, vertical offset of the name): the two names sit above and below
    their last points, so they never overprint when the curves meet.
    """
    color, name, dy = style
    vals = [(float(x), float(v)) for x, v in zip(px, values, strict=True) if v is not None]
    if not vals:
        return ""
    xy = [(x, top + (1 - v) * span) for x, v in vals]
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in xy)
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    return (
        f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>{dots}'
        f'<text x="{xy[-1][0] + 8:.1f}" y="{xy[-1][1] + dy:.1f}" fill="{color}" '
        f'font-weight="600">{esc(name)} {vals[-1][1]:.2f}</text>'
    )


def curve_svg(points: Sequence[dict[str, Any]], width: int = 520, height: int = 300) -> str:
    """Accuracy and macro F1 against labels used, one line each, named at their last point."""
    left, bottom, top, right = 44, 34, 12, 90
    xs = np.array([p["n_labels"] for p in points], dtype=float)
    px = _scale(xs, left, width - right) if len(xs) > 1 else np.full(len(xs), float(left))
    axis = (
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        f'stroke="#999"/><line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" '
        f'stroke="#999"/>'
    )
    ticks = "".join(
        f'<text x="{left - 6}" y="{top + (1 - v) * (height - top - bottom) + 4:.1f}" '
        f'text-anchor="end">{v:.1f}</text>'
        for v in (0.0, 0.5, 1.0)
    )
    ticks += "".join(
        f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{int(n)}</text>'
        for x, n in zip(px, xs, strict=True)
    )
    styles = {"accuracy": ("#0072B2", "accuracy", -6.0), "macro_f1": ("#D55E00", "F1", 16.0)}
    lines = "".join(
        _series(px, [p[key] for p in points], style, top, height - top - bottom)
        for key, style in styles.items()
    )
    label = (
        f'<text x="{(left + width - right) / 2}" y="{height - 2}" text-anchor="middle">'
        "labels used</text>"
    )
    return (
        f'<svg id="curve" width="{width}" height="{height}" font-size="12" role="img" '
        f'aria-label="learning curve">{axis}{ticks}{lines}{label}</svg>'
    )


def curve_section(diag: dict[str, Any]) -> str:
    points = diag.get("learning_curve") or []
    if not points:
        return '<p class="note">No model version yet.</p>'
    return curve_svg(points)


def drift_section(diag: dict[str, Any]) -> str:
    d = diag["drift"]
    if d["auc"] is None:
        return f'<p class="note">Not measured: {esc(d["reason"])}.</p>'
    facts = (
        f"A classifier tells {d['n_labeled']:,} labeled items from {d['n_new']:,} new ones "
        f"(task id above {d['newest_labeled_task']}) with cross-validated AUC "
        f"<b id='drift-auc'>{d['auc']:.3f}</b> (0.5 = indistinguishable; warning at "
        f"{d['threshold']:.2f})."
    )
    if d["warning"]:
        return (
            f'<div class="warning" id="drift-warning" role="alert">Drift: the newly imported items '
            f"differ from the labeled ones. {facts} Label some new items before trusting the "
            "model on them.</div>"
        )
    return f'<div class="ok">{facts}</div>'


# ---------------------------------------------------------------- the page


def render_page(diag: dict[str, Any], project_id: int) -> str:
    """The whole dashboard page for one project."""
    ls_project = f"{diag['label_studio_url']}/projects/{project_id}/data"
    header = (
        f"<h1>labelloop diagnosis: project {project_id}</h1>"
        f'<p class="meta">{diag["n_items"]:,} items, {diag["n_labeled"]:,} labeled; phase '
        f"{esc(diag['phase'])}; model {esc(diag.get('model_version') or 'none yet')}; computed "
        f'{esc(diag["created_at"])}. <a href="{esc(ls_project)}" target="_blank" '
        f'rel="noopener">Open in Label Studio</a> · '
        f'<a href="/api/projects/{project_id}/diagnosis">JSON</a></p>'
    )
    sections = (
        ("Drift of new data", drift_section(diag)),
        ("Confusion and per-class scores", classification_section(diag)),
        ("Label-error candidates", errors_section(diag)),
        ("Embedding map", map_section(diag)),
        ("Class distribution", distribution_section(diag)),
        ("Under-covered clusters", coverage_section(diag, project_id)),
        ("Outliers", outliers_section(diag)),
        ("Learning curve", curve_section(diag)),
    )
    body = "".join(f"<section><h2>{esc(t)}</h2>{html}</section>" for t, html in sections)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>labelloop · project {project_id}</title>"
        '<link rel="icon" href="data:,"><meta name="viewport" content="width=device-width">'
        f"<style>{CSS}</style></head><body>{header}{body}</body></html>"
    )
