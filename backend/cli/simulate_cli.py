"""``labelloop simulate``: compare strategies on a labeled dataset before using one on a project.

    labelloop simulate --dataset digits --strategies default,random --seeds 3 --budget 300
    labelloop simulate --dataset path/to/folder --noise 0.1 --json > curves.json
    labelloop simulate --dataset textures --plot curves.svg
    labelloop simulate --dataset digits --strategies default --serve both

Prints a table (mean ± std over seeds of test accuracy at several label counts and of the area under
the learning curve; labels needed to reach 95 % of the best final accuracy; planted label errors the
review ranking surfaced) and, with ``--noise``, the review view's precision and recall per cycle,
or the curves as JSON, and can draw them as an SVG file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from backend.cli.common import CliError
from backend.settings import Settings

if TYPE_CHECKING:
    from backend.simulate.run import Curve

BUILT_IN = ("adaptive", "default", "random")
#: Share of the best final mean accuracy that "labels to reach" counts up to.
REACH = 0.95
PALETTE = ("#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8a5a44")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``simulate`` sub-command's options."""
    parser.add_argument(
        "--dataset",
        required=True,
        help="digits, textures, nuisance, rare (generated) or a folder laid out as "
        "<root>/<class name>/<images>",
    )
    parser.add_argument(
        "--strategies",
        default="adaptive,default,random",
        help="comma-separated: adaptive (the configured weights and the bandit over the arms, as "
        "strategy.selection: adaptive runs them), default (the configured weights alone), "
        "random, a signal name, or NAME=signal:weight,signal:weight "
        "(e.g. default,random,unc=entropy:1,coverage:0.5); every row carries the audit share",
    )
    parser.add_argument("--seeds", type=_positive, default=3, help="seeds 0..N-1 (3)")
    parser.add_argument("--budget", type=_positive, default=200, help="labels per run (200)")
    parser.add_argument("--batch-size", type=_positive, default=20, help="labels per round (20)")
    parser.add_argument("--noise", type=_share, default=0.0, help="share of wrong answers (0)")
    parser.add_argument("--test-size", type=_share, default=0.3, help="held-out share (0.3)")
    parser.add_argument("--limit", type=_positive, help="use at most this many images")
    parser.add_argument(
        "--serve",
        choices=("ours", "ls-clusters", "both"),
        default="ours",
        help="how the annotator is served the queue: ours (our order), ls-clusters (Label "
        "Studio's rule with strategy.push_clusters: least-labeled cluster first, by score inside "
        "it) or both, one row each (ours)",
    )
    parser.add_argument("--json", action="store_true", help="print the curves as JSON")
    parser.add_argument("--plot", type=Path, help="write the learning curves to FILE.svg")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def parse_strategies(text: str, default: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``default,random,unc=entropy:1,coverage:0.5`` to name -> weights.

    A ``signal:weight`` item continues the weights of the ``NAME=`` item before it.

    Raises:
        CliError: an item that cannot be read, or a name given twice.
    """
    out: dict[str, dict[str, float]] = {}
    current: dict[str, float] | None = None
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, rest = item.rpartition("=") if "=" in item else ("", "", item)
        if name:
            current = out.setdefault(name, {})
            if current:
                raise CliError(f"strategy {name!r} is given twice")
        elif ":" not in rest:
            weights = dict(default) if rest in ("default", "adaptive") else {rest: 1.0}
            out[rest], current = weights, None
            continue
        if current is None:
            raise CliError(f"{item!r}: signal:weight must follow a NAME=signal:weight item")
        signal, _, weight = rest.partition(":")
        try:
            current[signal.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise CliError(f"{item!r}: the weight of {signal!r} is not a number") from None
    if not out:
        raise CliError("--strategies names no strategy")
    return out


def _by_strategy(curves: Sequence[Curve]) -> dict[str, list[Curve]]:
    grouped: dict[str, list[Curve]] = {}
    for curve in curves:
        grouped.setdefault(curve.strategy, []).append(curve)
    return grouped


def _matrix(runs: Sequence[Curve], field: str) -> NDArray[np.float64]:
    """(seeds, rounds) values of one point field, cut to the shortest run."""
    rounds = min(len(run.points) for run in runs)
    return np.array([[getattr(p, field) for p in run.points[:rounds]] for run in runs], dtype=float)


def _pm(values: NDArray[np.float64], fmt: str = ".3f") -> str:
    return f"{values.mean():{fmt}} ± {values.std():{fmt}}"


def _reach(run: Curve, target: float) -> int | None:
    return next((p.labels for p in run.points if p.accuracy >= target), None)


def summarize(curves: Sequence[Curve]) -> dict[str, dict[str, Any]]:
    """Per strategy: mean and std over seeds of accuracy per round, area, reach, errors surfaced.

    "Area" is the mean accuracy over rounds (the normalized area under the learning curve);
    "reach" the labels at which each seed first reaches 95 % of the best final mean accuracy.
    """
    grouped = _by_strategy(curves)
    finals = [_matrix(runs, "accuracy")[:, -1].mean() for runs in grouped.values()]
    target = REACH * max(finals)
    summary = {}
    for name, runs in grouped.items():
        accuracy = _matrix(runs, "accuracy")
        planted, surfaced = _matrix(runs, "planted")[:, -1], _matrix(runs, "surfaced")[:, -1]
        recall = np.divide(surfaced, planted, out=np.zeros_like(planted), where=planted > 0)
        summary[name] = {
            "labels": [p.labels for p in runs[0].points[: accuracy.shape[1]]],
            "accuracy_mean": accuracy.mean(axis=0).tolist(),
            "accuracy_std": accuracy.std(axis=0).tolist(),
            "area_mean": float(accuracy.mean(axis=1).mean()),
            "area_std": float(accuracy.mean(axis=1).std()),
            "target_accuracy": float(target),
            "labels_to_target": [_reach(run, target) for run in runs],
            "planted": planted.tolist(),
            "surfaced": surfaced.tolist(),
            "recall_mean": float(recall.mean()),
        }
    return summary


@dataclass(frozen=True)
class ReviewRound:
    """The review view after one cycle, summed over seeds (so precision and recall are those of
    every flag and every planted error of the round, not a mean of ratios).

    Attributes:
        labels: labels so far; flagged: labels the view holds; hits: planted ones among them;
        planted: planted (wrong) labels so far; seeds: runs summed.
        precision: hits / flagged (None without a flag); recall: hits / planted (None without a
        planted error).
    """

    labels: int
    flagged: int
    hits: int
    planted: int
    seeds: int

    @property
    def precision(self) -> float | None:
        return self.hits / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.hits / self.planted if self.planted else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "flagged": self.flagged,
            "planted_flagged": self.hits,
            "planted": self.planted,
            "precision": self.precision,
            "recall": self.recall,
        }


def review_rounds(runs: Sequence[Curve]) -> list[ReviewRound]:
    """One strategy's review view per cycle, summed over its seeds (cut to the shortest run)."""
    flagged, hits = _matrix(runs, "flagged"), _matrix(runs, "surfaced")
    planted = _matrix(runs, "planted")
    return [
        ReviewRound(
            labels=runs[0].points[i].labels,
            flagged=int(flagged[:, i].sum()),
            hits=int(hits[:, i].sum()),
            planted=int(planted[:, i].sum()),
            seeds=len(runs),
        )
        for i in range(flagged.shape[1])
    ]


def review_table(curves: Sequence[Curve]) -> str:
    """Per strategy and cycle: the review view's flags, planted errors among them, precision and
    recall (means per seed for the counts; precision and recall over every seed's flags)."""
    rows = []
    for name, runs in _by_strategy(curves).items():
        for r in review_rounds(runs):
            rows.append(
                [
                    name,
                    str(r.labels),
                    f"{r.flagged / r.seeds:.1f}",
                    f"{r.hits / r.seeds:.1f}",
                    f"{r.planted / r.seeds:.1f}",
                    "-" if r.precision is None else f"{r.precision:.2f}",
                    "-" if r.recall is None else f"{r.recall:.2f}",
                ]
            )
    headers = ["strategy", "labels", "flagged", "planted flagged", "planted", "precision", "recall"]
    return _markdown(headers, rows)


def _checkpoints(labels: Sequence[int], n: int = 4) -> list[int]:
    """Up to ``n`` round indices spread evenly over the curve, always including the last."""
    picks = {round(i * len(labels) / n) - 1 for i in range(1, n + 1)}
    return sorted(i for i in picks if i >= 0)


def _reach_text(reached: Sequence[int | None], budget: int) -> str:
    got = [r for r in reached if r is not None]
    if len(got) == len(reached):
        return f"{np.mean(got):.0f}"
    return f">{budget} ({len(got)}/{len(reached)} seeds)"


def table(curves: Sequence[Curve], *, budget: int, noise: float, top_k: int) -> str:
    """The summary as a GitHub-flavoured markdown table."""
    summary = summarize(curves)
    grouped = _by_strategy(curves)
    first = next(iter(summary.values()))
    rounds = _checkpoints(first["labels"])
    headers = ["strategy", *(f"acc@{first['labels'][i]}" for i in rounds), "area"]
    headers.append(f"labels to {first['target_accuracy']:.3f}")
    if noise > 0:
        headers.append(f"planted errors in review top {top_k}")
    rows = []
    for name, s in summary.items():
        accuracy = _matrix(grouped[name], "accuracy")
        row = [name, *(_pm(accuracy[:, i]) for i in rounds), _pm(accuracy.mean(axis=1))]
        row.append(_reach_text(s["labels_to_target"], budget))
        if noise > 0:
            surfaced, planted = np.array(s["surfaced"]), np.array(s["planted"])
            row.append(f"{surfaced.mean():.1f} of {planted.mean():.1f} ({s['recall_mean']:.0%})")
        rows.append(row)
    return _markdown(headers, rows)


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def to_json(
    curves: Sequence[Curve],
    strategies: Mapping[str, Mapping[str, float]],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything the table shows plus every seed's curve, round by round."""
    summary = summarize(curves)
    grouped = _by_strategy(curves)
    return {
        **meta,
        "strategies": {
            name: {
                "weights": dict(strategies[name]),
                "serve": grouped[name][0].serve,
                "summary": summary[name],
                "review": [r.as_dict() for r in review_rounds(grouped[name])],
                "runs": [
                    {
                        "seed": run.seed,
                        "labels": [p.labels for p in run.points],
                        "accuracy": [p.accuracy for p in run.points],
                        "planted": [p.planted for p in run.points],
                        "surfaced": [p.surfaced for p in run.points],
                        "flagged": [p.flagged for p in run.points],
                        "phase": [p.phase for p in run.points],
                    }
                    for run in grouped[name]
                ],
            }
            for name in grouped
        },
    }


def svg(curves: Sequence[Curve], *, title: str) -> str:
    """Learning curves (mean over seeds, band of ± one std) as a small standalone SVG.

    Each line is named at its right end, in its own color, so no legend is needed.
    """
    summary = summarize(curves)
    x_max = max(max(s["labels"]) for s in summary.values())
    lowest = min(min(s["accuracy_mean"]) for s in summary.values())
    frame = _Frame(x_max=float(x_max), y_low=min(0.9, float(np.floor(lowest * 10) / 10)))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{frame.width}" height="{frame.height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{frame.left}" y="24" font-size="15">{escape(title)}</text>',
        *frame.axes(),
    ]
    for i, (name, s) in enumerate(summary.items()):
        parts += _series(name, s, PALETTE[i % len(PALETTE)], frame)
    return "\n".join([*parts, "</svg>"]) + "\n"


@dataclass(frozen=True)
class _Frame:
    """Plot area and data-to-pixel mapping: labels on x (from 0), accuracy on y (up to 1)."""

    x_max: float
    y_low: float
    width: int = 720
    height: int = 420
    left: int = 60
    right: int = 150
    top: int = 40
    bottom: int = 50

    def x(self, value: float) -> float:
        return self.left + value / self.x_max * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        share = (value - self.y_low) / (1.0 - self.y_low)
        return self.top + (1.0 - share) * (self.height - self.top - self.bottom)

    def axes(self) -> list[str]:
        x0, x1 = self.left, self.width - self.right
        y0, y1 = self.top, self.height - self.bottom
        parts = []
        for v in np.linspace(0, self.x_max, 6):
            parts.append(
                f'<line x1="{self.x(v):.1f}" y1="{y0}" x2="{self.x(v):.1f}" y2="{y1}" '
                'stroke="#ddd"/>'
            )
            parts.append(
                f'<text x="{self.x(v):.1f}" y="{y1 + 16}" text-anchor="middle">{v:.0f}</text>'
            )
        for v in np.linspace(self.y_low, 1.0, 6):
            parts.append(
                f'<line x1="{x0}" y1="{self.y(v):.1f}" x2="{x1}" y2="{self.y(v):.1f}" '
                'stroke="#ddd"/>'
            )
            parts.append(
                f'<text x="{x0 - 6}" y="{self.y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>'
            )
        middle = (y0 + y1) / 2
        parts.append(
            f'<text x="{(x0 + x1) / 2}" y="{self.height - 12}" text-anchor="middle">labels</text>'
        )
        parts.append(
            f'<text x="16" y="{middle}" text-anchor="middle" '
            f'transform="rotate(-90 16 {middle})">test accuracy</text>'
        )
        return parts


def _series(name: str, s: Mapping[str, Any], color: str, frame: _Frame) -> list[str]:
    labels, mean, std = s["labels"], np.array(s["accuracy_mean"]), np.array(s["accuracy_std"])
    upper = [(n, min(1.0, m + d)) for n, m, d in zip(labels, mean, std, strict=True)]
    lower = [(n, m - d) for n, m, d in zip(labels, mean, std, strict=True)]

    def points(values: Sequence[tuple[float, float]]) -> str:
        return " ".join(f"{frame.x(n):.1f},{frame.y(max(frame.y_low, v)):.1f}" for n, v in values)

    end_x, end_y = frame.x(labels[-1]), frame.y(mean[-1])
    return [
        f'<polygon points="{points(upper + lower[::-1])}" fill="{color}" fill-opacity="0.15"/>',
        f'<polyline points="{points(list(zip(labels, mean, strict=True)))}" fill="none" '
        f'stroke="{color}" stroke-width="2"/>',
        f'<text x="{end_x + 6:.1f}" y="{end_y + 4:.1f}" fill="{color}">'
        f"{escape(name)} {mean[-1]:.3f}</text>",
    ]


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """Run the simulation and print the table (or JSON); write the plot when asked."""
    from backend.simulate.run import SERVES, DatasetError, load_dataset, row_name, simulate

    if args.plot is not None and args.plot.suffix.lower() != ".svg":
        raise CliError(f"--plot writes SVG; name the file *.svg (got {args.plot})")
    strategies = parse_strategies(args.strategies, settings.strategy.weights)
    _check_strategies(settings, strategies, args.batch_size)
    serves = SERVES if args.serve == "both" else tuple(s for s in SERVES if s == args.serve)
    try:
        dataset = load_dataset(args.dataset, limit=args.limit)
        curves = simulate(
            settings,
            dataset,
            strategies,
            seeds=range(args.seeds),
            budget=args.budget,
            batch_size=args.batch_size,
            noise=args.noise,
            test_size=args.test_size,
            serves=serves,
        )
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    if not dataset.true_labels:
        print(
            f"warning: {dataset.name} has only the labels it was given; test accuracy is "
            "measured against them, not against true classes",
            file=sys.stderr,
        )
    rows = {row_name(n, s): w for n, w in strategies.items() for s in serves}
    _report(settings, args, dataset.name, curves, rows)
    return 0


def _check_strategies(
    settings: Settings, strategies: Mapping[str, Mapping[str, float]], batch_size: int
) -> None:
    """Refuse unknown signals and negative weights before any image is embedded."""
    from backend.simulate.run import strategy_settings

    for name, weights in strategies.items():
        try:
            strategy_settings(settings, weights, seed=0, batch_size=batch_size)
        except ValidationError as exc:
            raise CliError(f"strategy {name!r}: {exc.errors()[0]['msg']}") from None


def _report(
    settings: Settings,
    args: argparse.Namespace,
    dataset: str,
    curves: Sequence[Curve],
    strategies: Mapping[str, Mapping[str, float]],
) -> None:
    top_k = settings.strategy.review_max_flags
    title = (
        f"{dataset}: {settings.model.backbone}, {args.seeds} seeds, batches of {args.batch_size}"
        + (f", {args.noise:.0%} wrong answers" if args.noise else "")
    )
    if args.plot is not None:
        args.plot.write_text(svg(curves, title=title), encoding="utf-8")
    if args.json:
        meta = {
            "dataset": dataset,
            "backbone": settings.model.backbone,
            "seeds": args.seeds,
            "budget": args.budget,
            "batch_size": args.batch_size,
            "noise": args.noise,
            "test_size": args.test_size,
            "serve": args.serve,
            "review_top_k": top_k,
        }
        print(json.dumps(to_json(curves, strategies, meta), indent=2))
        return
    print(f"{title}\n")
    print(table(curves, budget=args.budget, noise=args.noise, top_k=top_k))
    if args.noise:
        print(
            f"\nReview view per cycle (its top {top_k}; flags and planted errors per seed, "
            f"precision and recall over all {args.seeds} seeds' flags)\n"
        )
        print(review_table(curves))
    if args.plot is not None:
        print(f"\nlearning curves written to {args.plot}")
