"""The cycle pauses Python's cycle collector while its stages run, and always resumes it."""

from __future__ import annotations

import gc
import threading

import pytest

from backend.loop.cycle import CollectorPause


def test_the_collector_resumes_when_the_last_overlapping_cycle_ends() -> None:
    assert gc.isenabled()
    pause = CollectorPause()
    first_in, second_done = threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        first_in.wait()
        with pause:
            seen.append(gc.isenabled())
        second_done.set()

    worker = threading.Thread(target=second)
    worker.start()
    with pause:
        first_in.set()
        second_done.wait()
        seen.append(gc.isenabled())  # the other cycle ended; this one still runs paused
    worker.join()
    assert seen == [False, False]
    assert gc.isenabled()


def test_a_failing_cycle_resumes_it_and_a_collector_left_off_stays_off() -> None:
    pause = CollectorPause()
    with pytest.raises(RuntimeError), pause:
        raise RuntimeError("stage failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with pause:
            assert not gc.isenabled()
        assert not gc.isenabled()  # the process had it off: it stays off
    finally:
        gc.enable()
