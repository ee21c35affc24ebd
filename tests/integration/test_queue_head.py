"""A top-K push against a REAL Label Studio: annotators label past K and still get our order.

Label Studio serves tasks without a prediction of the current version in RANDOM order, so the
pushed head must be topped up before annotators run out. Here the backend runs as ``labelloop
serve`` does (webhooks -> inbox -> scheduler), cycles only when the test runs one, and the
simulated annotator labels through the next-task API ("Label All Tasks") well past K.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.cli.demo import DEMO_CONFIG, ServedBackend, serve_in_thread
from backend.labelstudio.client import LabelStudio
from backend.loop.queue import load_state
from backend.runtime.lease import run_cycle_once
from backend.runtime.runner import make_runner
from backend.settings import Settings, load_settings
from backend.simulate.sets import digit_images
from backend.store import cycle_records
from backend.store.db import Store
from tests.integration.support import choice, wait_for, write_config

N_IMAGES, TOP_K, LABELED = 60, 10, 26


@pytest.fixture
def served(label_studio: Any, tmp_path: Path) -> Iterator[tuple[Settings, LabelStudio, Store]]:
    config = write_config(
        tmp_path,
        label_studio,
        model={"backbone": "small_cnn", "image_size": 32, "committee_size": 2},
        strategy={"push_top_k": TOP_K, "cold_start_labels": 20},
        # Cycles run only when the test asks; the scheduler still applies webhooks.
        loop={"retrain_after": 100_000, "schedule_interval_minutes": None, "poll_s": 0.5},
    )
    settings = load_settings(config, environ={})
    ls = LabelStudio(settings.label_studio)
    store = Store(settings.store.url)
    store.upgrade()
    backend: ServedBackend = serve_in_thread(settings, loop=True)
    try:
        yield settings, ls, store
    finally:
        backend.stop()
        store.dispose()
        ls.close()


def test_label_all_tasks_keeps_our_order_past_k(
    served: tuple[Settings, LabelStudio, Store],
) -> None:
    settings, ls, store = served
    project = ls.create_project("queue head", DEMO_CONFIG)
    images = list(digit_images(N_IMAGES, size=32, seed=3))
    ids = ls.upload_images(project, [(name, data) for name, data, _ in images])
    truth = {t: str(digit) for t, (_, _, digit) in zip(ids, images, strict=True)}
    assert ls.connect_ml_backend(project, settings.server.public_url, "labelloop")

    def cycle() -> dict[str, Any]:
        run = None
        deadline = time.monotonic() + 180
        while run is None and time.monotonic() < deadline:  # a top-up may hold the lease
            run = run_cycle_once(store, make_runner(settings, store), project, trigger="manual")
            time.sleep(0 if run is not None else 0.2)
        assert run is not None and run.state == "succeeded", run
        with store.session() as session:
            return cycle_records.to_dict(cycle_records.history(session, project, 1)[0])

    first = cycle()
    state = load_state(settings, project)
    assert state is not None and state.n == N_IMAGES and state.pushed == TOP_K
    assert ls.model_versions(project) == {first["model_version"]: TOP_K}

    def pushed() -> int:
        now = load_state(settings, project)
        return now.pushed if now is not None else 0

    served_ids = []
    for step in range(LABELED):
        task = ls.next_task(project)
        assert task is not None
        served_ids.append(int(task["id"]))
        ls.create_annotation(task["id"], choice(truth[task["id"]]))
        # An annotator slower than the top-up: once half the head is labeled it grows again.
        wait_for(
            lambda step=step: pushed() - (step + 1) >= (TOP_K + 1) // 2, 180, "the queue top-up"
        )
    assert served_ids == [int(t) for t in state.task_ids[:LABELED]]  # never random, past K
    before = pushed()
    assert before > LABELED
    assert ls.model_versions(project) == {first["model_version"]: before}

    second = cycle()  # a model now; the first version is pruned after the record
    assert not second["model_version"].endswith("-cold")
    assert second["counts"]["after"]["deleted_predictions"] == before
    assert ls.model_versions(project) == {second["model_version"]: TOP_K}
    head = load_state(settings, project)
    assert head is not None and head.version == second["model_version"]
    task = ls.next_task(project)
    assert task is not None and int(task["id"]) == int(head.task_ids[0])
