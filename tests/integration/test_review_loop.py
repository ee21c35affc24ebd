"""The review queue end to end against a REAL Label Studio: few false flags while the model is weak,
the planted errors on top once it knows enough, with annotators following labelloop's queue.

Each figure is taken on three draws of the demo-sized digits project (three generator seeds), one
project each: which items the queue asks for, and so how hard the labeled items are, changes with
every change of the selection, and a single draw of 20 planted errors says little about the
view's precision (draws of the same code put 11 to 17 of them in the top 20).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.support import Loop, digits_loop

pytestmark = pytest.mark.integration
N_IMAGES = 300  # the demo's size
VIEW = "labelloop: suspected label errors"
DRAWS = (2, 3, 4)
WRONG = {3, 12, 21, 30}  # about 11 % of each batch of 35 wrong, spread over what the queue asks for


@dataclass
class Draw:
    """What one draw's view showed: at 25 true labels, and at 200 labels with planted errors."""

    seed: int
    weak_flags: list[int] = field(default_factory=list)
    weak_push: dict[str, Any] = field(default_factory=dict)
    planted: set[int] = field(default_factory=set)
    top: list[int] = field(default_factory=list)
    first: dict[str, Any] = field(default_factory=dict)
    truth_of_first: str = ""
    n_labels: int = 0


def _flagged(loop: Loop) -> list[int]:
    view = next(v for v in loop.ls.list_views(loop.project) if v["data"]["title"] == VIEW)
    return [t["id"] for t in loop.ls.view_tasks(loop.project, view["id"])]


def _run(loop: Loop, seed: int) -> Draw:
    draw = Draw(seed)
    assert loop.cycle().state == "succeeded"  # cold start: the queue from embeddings
    loop.label_next(25)
    assert loop.cycle().state == "succeeded", loop.last_cycle()
    draw.weak_flags = _flagged(loop)
    draw.weak_push = loop.last_cycle()["counts"]["push"]
    for _ in range(5):  # 25 + 5 x 35 = 200 labels, a cycle after each batch
        served = loop.label_next(35, wrong=WRONG)
        draw.planted |= {served[i] for i in WRONG}
        assert loop.cycle().state == "succeeded", loop.last_cycle()
    draw.n_labels = loop.last_cycle()["metrics"]["n_labels"]
    draw.top = _flagged(loop)[:20]
    if draw.top:
        draw.first = loop.ls.get_task(draw.top[0])["data"]
        draw.truth_of_first = loop.truth[draw.top[0]]
    return draw


@pytest.fixture(scope="module")
def draws(label_studio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Draw]]:
    out = []
    for seed in DRAWS:
        root = tmp_path_factory.mktemp(f"review-loop-{seed}")
        with digits_loop(label_studio, root, f"review digits {seed}", N_IMAGES, seed=seed) as loop:
            out.append(_run(loop, seed))
    yield out


def test_true_labels_of_a_weak_model_get_at_most_two_flags(draws: list[Draw]) -> None:
    for draw in draws:
        assert len(draw.weak_flags) <= 2, (draw.seed, draw.weak_flags, draw.weak_push)


def test_planted_errors_fill_the_top_of_the_view_at_200_labels(draws: list[Draw]) -> None:
    for draw in draws:
        assert draw.n_labels == 200
        assert len(draw.planted) == 20
        # The most suspicious label is a planted error, named as such, with the true class.
        assert draw.top and draw.top[0] in draw.planted, (draw.seed, draw.top)
        assert "likely mislabeled" in draw.first["labelloop_label_error_reason"]
        assert draw.first["labelloop_given"] != draw.truth_of_first
    hits = [len(d.planted & set(d.top)) for d in draws]
    # Over the three draws at least 70 % of the 60 planted errors are in the views' top 20s.
    assert sum(hits) >= 0.7 * 20 * len(draws), hits
