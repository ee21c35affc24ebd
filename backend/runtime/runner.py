"""The cycle as the runtime runs it: the loop's stages, then the diagnosis of what they produced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from backend.diagnosis.record import record_diagnosis
from backend.labelstudio.client import LabelStudio
from backend.loop.contract import CycleContext, CycleResult, CycleRunner
from backend.loop.cycle import CollectorPause, run_cycle
from backend.model.engines import Engines
from backend.settings import Settings
from backend.store.db import Store


def make_runner(settings: Settings, store: Store) -> CycleRunner:
    """The cycle as the scheduler runs it: one Label Studio client per cycle, open until the
    cycle's after work (its diagnosis views, the pruning) is done; converted backbones kept from
    one cycle to the next; Python's cycle collector paused while the stages run
    (:class:`~backend.loop.cycle.CollectorPause`)."""
    engines = Engines()
    pause = CollectorPause()

    def run(ctx: CycleContext, project_id: int) -> CycleResult:
        ls = LabelStudio(settings.label_studio)
        try:
            with pause:
                result = run_cycle(
                    ctx, settings, store, ls, project_id, diagnose=record_diagnosis, engines=engines
                )
        except BaseException:
            ls.close()
            raise
        work = result.after
        if work is None:
            ls.close()
            return result

        def after() -> Mapping[str, Any]:
            try:
                return work()
            finally:
                ls.close()

        return replace(result, after=after)

    return run
