"""The runtime's cycle runner keeps its Label Studio client open for the cycle's after work."""

from __future__ import annotations

from typing import Any

import pytest

from backend.loop.contract import CycleContext, CycleResult
from backend.runtime import runner
from backend.settings import Settings
from backend.store.db import Store


class Client:
    made: list[Client] = []

    def __init__(self, _settings: Any) -> None:
        self.closed = False
        Client.made.append(self)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[Client]:
    Client.made = []
    monkeypatch.setattr(runner, "LabelStudio", Client)
    return Client.made


def _ctx(store: Store) -> CycleContext:
    return CycleContext(store, cycle_id=1, project_id=7, trigger="manual")


def test_the_after_work_runs_with_the_client_open_and_closes_it(
    settings: Settings, store: Store, clients: list[Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    def cycle(_ctx: Any, _settings: Any, _store: Any, ls: Client, *_: Any, **__: Any) -> Any:
        return CycleResult(model_version="v1", after=lambda: {"open": int(not ls.closed)})

    monkeypatch.setattr(runner, "run_cycle", cycle)
    result = runner.make_runner(settings, store)(_ctx(store), 7)
    assert result.model_version == "v1" and not clients[0].closed
    assert result.after is not None and result.after() == {"open": 1}
    assert clients[0].closed


def test_a_failing_cycle_or_one_without_after_work_closes_the_client(
    settings: Settings, store: Store, clients: list[Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*_: Any, **__: Any) -> Any:
        raise RuntimeError("stage failed")

    monkeypatch.setattr(runner, "run_cycle", failing)
    with pytest.raises(RuntimeError):
        runner.make_runner(settings, store)(_ctx(store), 7)
    monkeypatch.setattr(runner, "run_cycle", lambda *_, **__: CycleResult(model_version="v2"))
    assert runner.make_runner(settings, store)(_ctx(store), 7).after is None
    assert [c.closed for c in clients] == [True, True]
