"""``labelloop scheduler``: the one scheduler of a deployment as a process of its own."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from backend.loop.contract import RunnerFactory, SettingsFor
from backend.loop.queue import make_refill
from backend.runtime.runner import make_runner
from backend.runtime.scheduler import LoopScheduler, cycle_dispatch
from backend.settings import Settings
from backend.store.db import Store
from backend.store.project_settings import loop_settings_for

log = logging.getLogger(__name__)


def run_scheduler_process(
    settings: Settings,
    make_runner: RunnerFactory,
    *,
    stop: threading.Event,
    settings_for: SettingsFor | None = None,
) -> int:
    """``labelloop scheduler``: the one scheduler, applying the inbox itself, until ``stop``."""
    store = Store(settings.store.url)
    store.upgrade()
    scheduler = LoopScheduler(
        store,
        make_runner(settings, store),
        settings.loop,
        settings_for=settings_for or loop_settings_for(store, settings),
        apply_inbox=True,
        dispatch=cycle_dispatch(settings),
        refill=make_refill(settings, store),
    )
    try:
        scheduler.start()
        log.info("labelloop scheduler running (poll every %.1f s)", settings.loop.poll_s)
        while not stop.wait(1.0):
            pass
    finally:
        scheduler.shutdown()
        store.dispose()
    return 0


def cmd_scheduler(settings: Settings, _args: argparse.Namespace) -> int:
    """``labelloop scheduler``: run until SIGTERM or Ctrl-C."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run_scheduler_process(settings, make_runner, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
