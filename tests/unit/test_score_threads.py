"""The cycle's scoring runs on ``strategy.score_threads`` threads (default: one per CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backend.loop.score
from backend.loop.score import score_stage
from strategies import Pool
from strategies.base import available_threads
from strategies.combine import prioritize
from tests.conftest import make_settings
from tests.unit.strategies.conftest import make_arrays


@pytest.mark.parametrize("limit", [None, 1, 3])
def test_the_cycle_scores_on_strategy_score_threads(
    limit: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(available_threads())
        return prioritize(*args, **kwargs)

    monkeypatch.setattr(backend.loop.score, "prioritize", spy)
    strategy = {} if limit is None else {"score_threads": limit}
    settings = make_settings(tmp_path, strategy=strategy)
    score_stage(settings, (np.arange(200), Pool(**make_arrays(n=200, n_labeled=40)), None))
    default = available_threads()
    assert seen == [default if limit is None else limit]
