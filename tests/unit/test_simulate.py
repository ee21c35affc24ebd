"""``labelloop simulate``: the real cycle code on scikit-learn digits with a simulated annotator."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli.common import CliError
from backend.cli.main import main
from backend.cli.simulate_cli import (
    parse_strategies,
    review_rounds,
    review_table,
    summarize,
    svg,
)
from backend.settings import Settings
from backend.simulate.run import (
    Curve,
    Point,
    load_dataset,
    ls_cluster_picks,
    make_problem,
    simulate,
)
from tests.conftest import SMALL_MODEL, make_settings

FAST_MODEL = {**SMALL_MODEL, "max_epochs": 30}
STRATEGIES = {
    "adaptive": {"margin": 1.0, "coverage": 0.25},
    "default": {"margin": 1.0, "coverage": 0.25},
    "random": {"random": 1.0},
}


def _fast(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, model=FAST_MODEL)


@pytest.fixture(scope="module")
def curves(tmp_path_factory: pytest.TempPathFactory) -> list[Curve]:
    """Adaptive, default and random on 300 digits, 2 seeds, 100 labels in batches of 20, 10 %
    noise; every row chooses its own first batch (random's is random)."""
    settings = _fast(tmp_path_factory.mktemp("sim"))
    dataset = load_dataset("digits", limit=300)
    return simulate(
        settings, dataset, STRATEGIES, seeds=[0, 1], budget=100, batch_size=20, noise=0.1
    )


def _area(curves: Sequence[Curve], strategy: str) -> float:
    runs = [c for c in curves if c.strategy == strategy]
    return float(np.mean([np.mean([p.accuracy for p in run.points]) for run in runs]))


def test_one_point_per_round_with_labels_increasing(curves: list[Curve]) -> None:
    assert sorted((c.strategy, c.seed) for c in curves) == [
        ("adaptive", 0),
        ("adaptive", 1),
        ("default", 0),
        ("default", 1),
        ("random", 0),
        ("random", 1),
    ]
    for curve in curves:
        assert [p.labels for p in curve.points] == [20, 40, 60, 80, 100]
        assert all(0.0 <= p.accuracy <= 1.0 for p in curve.points)
        assert curve.points[-1].accuracy > 0.3  # far above chance (0.1) with 100 labels
        assert [p.planted for p in curve.points] == sorted(p.planted for p in curve.points)


#: Seeds of the adaptive-versus-random comparison. On two seeds the gap between the two orders
#: swung by 0.07 from one CPU to another (the same code: float rounding of other BLAS kernels
#: changes which items an active learner picks), so the comparison is made over eight, paired by
#: seed (both orders see the same split); the mean gap's standard error is about 0.02 there.
COMPARE_SEEDS = list(range(8))


def test_adaptive_curve_is_not_below_random(tmp_path: Path) -> None:
    """What the project runs by default (the bandit over the arms, audit share included)."""
    settings = _fast(tmp_path)
    dataset = load_dataset("digits", limit=300)
    compared = {k: STRATEGIES[k] for k in ("adaptive", "random")}
    runs = simulate(
        settings, dataset, compared, seeds=COMPARE_SEEDS, budget=100, batch_size=20, noise=0.1
    )
    assert len(runs) == 2 * len(COMPARE_SEEDS)
    assert _area(runs, "adaptive") >= _area(runs, "random") - 0.03


def test_noisy_run_surfaces_planted_errors(curves: list[Curve]) -> None:
    final = [c.points[-1] for c in curves if c.strategy == "default"]
    assert sum(p.planted for p in final) > 0
    assert sum(p.surfaced for p in final) > 0
    assert all(p.surfaced <= p.planted for p in final)


def test_review_view_precision_and_recall_per_cycle(curves: list[Curve]) -> None:
    """The planted run's review view, cycle by cycle: what it holds, how much of it is planted,
    summed over the seeds into precision and recall."""
    for curve in curves:
        assert all(p.surfaced <= p.flagged <= 50 for p in curve.points)  # review_max_flags
    runs = [c for c in curves if c.strategy == "default"]
    rounds = review_rounds(runs)
    assert [r.labels for r in rounds] == [20, 40, 60, 80, 100]
    for i, r in enumerate(rounds):
        assert r.flagged == sum(run.points[i].flagged for run in runs)
        assert r.hits == sum(run.points[i].surfaced for run in runs)
        assert r.planted == sum(run.points[i].planted for run in runs)
        assert r.precision == (r.hits / r.flagged if r.flagged else None)
    final = rounds[-1]
    assert final.flagged > 0 and final.recall is not None and final.recall > 0
    assert final.precision is not None and final.precision >= 0.5  # flags mostly planted ones
    text = review_table(curves)
    assert text.count("| default ") == 5 and text.count("| random ") == 5
    cells = _cells(text, "default", "100")
    assert cells[5:] == [f"{final.precision:.2f}", f"{final.recall:.2f}"]
    assert cells[2] == f"{final.flagged / 2:.1f}"  # per seed


def _cells(table: str, strategy: str, labels: str) -> list[str]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    return next(r for r in rows if r[:2] == [strategy, labels])


def test_review_rounds_sum_the_seeds_before_dividing() -> None:
    def run(seed: int, flagged: int, surfaced: int, planted: int) -> Curve:
        point = Point(20, 0.5, planted, surfaced, "model", flagged)
        return Curve("x", seed, (point,))

    (r,) = review_rounds([run(0, 4, 3, 5), run(1, 0, 0, 1)])
    assert (r.flagged, r.hits, r.planted, r.seeds) == (4, 3, 6, 2)
    assert r.precision == 0.75 and r.recall == 0.5  # not the mean of 0.75 and "no flags"
    (empty,) = review_rounds([run(0, 0, 0, 0)])
    assert empty.precision is None and empty.recall is None
    row = _cells(review_table([run(0, 0, 0, 0)]), "x", "20")
    assert row == ["x", "20", "0.0", "0.0", "0.0", "-", "-"]


def test_same_seed_meets_the_same_annotator() -> None:
    x = np.random.default_rng(0).normal(size=(100, 4))
    y = np.arange(100) % 4
    one = make_problem(x, y, ("a", "b", "c", "d"), seed=3, test_size=0.2, noise=0.1)
    two = make_problem(x, y, ("a", "b", "c", "d"), seed=3, test_size=0.2, noise=0.1)
    assert one.answers == two.answers and one.planted == two.planted
    assert len(one.planted) == 8  # 10 % of the 80 pool items
    truth = {t: int(y[t - 1]) for t in one.answers}
    assert {t for t, a in one.answers.items() if a != truth[t]} == one.planted


def test_summary_and_svg(curves: list[Curve]) -> None:
    summary = summarize(curves)
    assert summary["default"]["labels"] == [20, 40, 60, 80, 100]
    assert len(summary["random"]["accuracy_mean"]) == 5
    drawing = svg(curves, title="digits <small>")
    assert drawing.startswith("<svg") and drawing.count("<polyline") == 3  # one line per row
    assert "digits &lt;small&gt;" in drawing


def test_parse_strategies() -> None:
    parsed = parse_strategies("default,random,mix=entropy:1,coverage:0.5,bald", {"margin": 1.0})
    assert parsed == {
        "default": {"margin": 1.0},
        "random": {"random": 1.0},
        "mix": {"entropy": 1.0, "coverage": 0.5},
        "bald": {"bald": 1.0},
    }
    with pytest.raises(CliError, match="must follow"):
        parse_strategies("default,coverage:0.5", {})
    with pytest.raises(CliError, match="not a number"):
        parse_strategies("x=margin:high", {})


def _config(tmp_path: Path) -> Path:
    lines = ["store:", f"  data_dir: {tmp_path / 'data'}", "model:"]
    lines += [f"  {key}: {value}" for key, value in FAST_MODEL.items()]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _folder(root: Path) -> Path:
    """Two classes a small CNN tells apart: dark and light squares with a little noise."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("light", 210)):
        (root / name).mkdir(parents=True)
        for i in range(30):
            pixels = np.clip(level + rng.normal(0, 20, (32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_cli_json_on_an_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _folder(tmp_path / "images")
    plot = tmp_path / "curves.svg"
    argv = ["--config", str(_config(tmp_path)), "simulate", "--dataset", str(images)]
    argv += ["--seeds", "2", "--budget", "20", "--batch-size", "10", "--json", "--plot", str(plot)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "only the labels it was given" in captured.err  # a folder has no true classes
    assert out["dataset"] == str(images) and out["backbone"] == "small_cnn"
    assert set(out["strategies"]) == {"adaptive", "default", "random"}
    runs = out["strategies"]["random"]["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert all(r["labels"] == [10, 20] for r in runs)
    assert all(0.0 <= a <= 1.0 for r in runs for a in r["accuracy"])
    assert plot.read_text(encoding="utf-8").startswith("<svg")
    assert any((tmp_path / "data" / "embeddings").iterdir())  # through the embedding cache


def test_cli_table_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _folder(tmp_path / "images")
    config = ["--config", str(_config(tmp_path)), "simulate", "--dataset"]
    assert main([*config, str(images), "--seeds", "1", "--budget", "10", "--batch-size", "10"]) == 0
    out = capsys.readouterr().out
    assert "| strategy" in out and "| default" in out and "| random" in out
    assert main([*config, str(images), "--strategies", "x=nope:1"]) == 2
    assert "unknown signal" in capsys.readouterr().err
    assert main([*config, str(tmp_path / "missing")]) == 2
    assert "not digits, textures or a folder" in capsys.readouterr().err


def test_ls_cluster_serving_takes_the_least_labeled_cluster_by_score() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.05])
    clusters = np.array([0, 0, 0, 7, 7, 2, 0])
    # fresh push: lowest score first, then round-robin over clusters, lowest score inside each
    assert ls_cluster_picks(scores, clusters, 7) == [6, 3, 5, 0, 4, 1, 2]
    # 2 labeled from cluster 0 already: clusters 7 and 2 first, each by score; 2 runs dry
    assert ls_cluster_picks(scores, clusters, 5, {0: 2}) == [3, 5, 4, 6, 0]
    assert ls_cluster_picks(scores, clusters, 2, {0: 2, 7: 1}) == [5, 3]
    assert ls_cluster_picks(scores[:0], clusters[:0], 3) == []


def test_cli_serve_both_gives_a_row_per_serving_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _folder(tmp_path / "images")
    argv = ["--config", str(_config(tmp_path)), "simulate", "--dataset", str(images)]
    argv += ["--strategies", "default", "--seeds", "1", "--budget", "20", "--batch-size", "10"]
    assert main([*argv, "--serve", "both", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["serve"] == "both"
    rows = out["strategies"]
    assert set(rows) == {"default", "default [ls-clusters]"}
    assert rows["default"]["serve"] == "ours"
    assert rows["default [ls-clusters]"]["serve"] == "ls-clusters"
    assert rows["default [ls-clusters]"]["weights"] == rows["default"]["weights"]
    assert all(r["labels"] == [10, 20] for row in rows.values() for r in row["runs"])
    assert main([*argv, "--serve", "ls-clusters"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split("|")[1].strip() for line in lines if line.startswith("| ")]
    assert names == ["strategy", "default [ls-clusters]"]
