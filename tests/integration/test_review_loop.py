"""The review queue end to end against a REAL Label Studio: few false flags while the model is weak,
the planted errors on top once it knows enough, with annotators following labelloop's queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.support import Loop, digits_loop

pytestmark = pytest.mark.integration
N_IMAGES = 300  # the demo's size
VIEW = "labelloop: suspected label errors"


@pytest.fixture(scope="module")
def loop(label_studio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    with digits_loop(
        label_studio, tmp_path_factory.mktemp("review-loop"), "review digits", N_IMAGES, seed=2
    ) as loop:
        yield loop


def _flagged(loop: Loop) -> list[int]:
    view = next(v for v in loop.ls.list_views(loop.project) if v["data"]["title"] == VIEW)
    return [t["id"] for t in loop.ls.view_tasks(loop.project, view["id"])]


def test_true_labels_of_a_weak_model_get_at_most_two_flags(loop: Loop) -> None:
    assert loop.cycle().state == "succeeded"  # cold start: the queue from embeddings
    loop.label_next(25)
    assert loop.cycle().state == "succeeded", loop.last_cycle()
    flagged = _flagged(loop)
    assert len(flagged) <= 2, (flagged, loop.last_cycle()["counts"]["push"])


def test_planted_errors_fill_the_top_of_the_view_at_200_labels(loop: Loop) -> None:
    planted: set[int] = set()
    wrong = {3, 12, 21, 30}  # about 11 % wrong, spread over what the queue asks for
    for _ in range(5):  # 25 + 5 x 35 = 200 labels, a cycle after each batch
        served = loop.label_next(35, wrong=wrong)
        planted |= {served[i] for i in wrong}
        assert loop.cycle().state == "succeeded", loop.last_cycle()
    assert loop.last_cycle()["metrics"]["n_labels"] == 200
    top = _flagged(loop)[:20]
    assert len(planted & set(top)) >= 16, (top, planted, loop.last_cycle()["counts"]["push"])
    first = loop.ls.get_task(top[0])["data"]
    assert "likely mislabeled" in first["labelloop_label_error_reason"]
    assert first["labelloop_given"] != loop.truth[top[0]]
