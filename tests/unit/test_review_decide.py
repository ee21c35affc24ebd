"""The review's decision knows which labels the queue chose and which came in random order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import backend.loop.review
from backend.loop.review import decide
from backend.settings import Settings
from strategies import Pool
from strategies.label_quality import label_quality
from tests.unit.strategies.conftest import queue_and_audit


def test_decide_holds_the_chosen_labels_to_the_random_order_rate(settings: Settings) -> None:
    arrays, _ = queue_and_audit(2)
    quality = decide(settings, Pool(**arrays))
    assert quality is not None
    labels, probs, x = arrays["labels"], arrays["oos_probs"], arrays["embeddings"]
    by_origin = label_quality(labels, probs, embeddings=x, origin=arrays["origin"])
    alike = label_quality(labels, probs, embeddings=x)
    assert not np.allclose(by_origin.p_error, alike.p_error)  # the origin changes the decision
    np.testing.assert_array_equal(quality.p_error, by_origin.p_error)
    np.testing.assert_array_equal(quality.flagged, by_origin.flagged)


def test_decide_without_origin_judges_every_label_alike(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["origin"])
        return label_quality(*args, **kwargs)

    monkeypatch.setattr(backend.loop.review, "label_quality", spy)
    arrays, _ = queue_and_audit(1)
    del arrays["origin"]
    assert decide(settings, Pool(**arrays)) is not None
    assert seen == [None]


def test_pool_rejects_an_origin_that_is_neither_chosen_nor_random() -> None:
    arrays, _ = queue_and_audit(0)
    arrays["origin"] = arrays["origin"] + 1
    with pytest.raises(ValueError, match="origin must be"):
        Pool(**arrays)
