"""The cycle as the runtime runs it: the loop's stages, then the diagnosis of what they produced."""

from __future__ import annotations

from backend.diagnosis.record import record_diagnosis
from backend.labelstudio.client import LabelStudio
from backend.loop.contract import CycleContext, CycleResult, CycleRunner
from backend.loop.cycle import run_cycle
from backend.model.engines import Engines
from backend.settings import Settings
from backend.store.db import Store


def make_runner(settings: Settings, store: Store) -> CycleRunner:
    """The cycle as the scheduler runs it: one Label Studio client per cycle, converted backbones
    kept from one cycle to the next."""
    engines = Engines()

    def run(ctx: CycleContext, project_id: int) -> CycleResult:
        with LabelStudio(settings.label_studio) as ls:
            return run_cycle(
                ctx, settings, store, ls, project_id, diagnose=record_diagnosis, engines=engines
            )

    return run
