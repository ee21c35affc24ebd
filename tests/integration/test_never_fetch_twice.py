"""Images served by a REAL Label Studio's local-files storage, as real projects serve them: the
first cycle fetches each image once, the second fetches none (counted on a proxy in front of
Label Studio: every request to a ``/data/`` path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backend.cli.demo import DEMO_CONFIG
from backend.labelstudio.client import LabelStudio
from backend.runtime.lease import run_cycle_once
from backend.runtime.runner import make_runner
from backend.settings import load_settings
from backend.simulate.sets import digit_images
from backend.store import cycle_records
from backend.store.db import Store
from tests.integration.support import Proxy, write_config

N_IMAGES = 24


def test_second_cycle_fetches_no_image_from_local_files_storage(
    label_studio: Any, proxy: Proxy, tmp_path: Path
) -> None:
    if label_studio.process is None:
        pytest.skip(
            "a reused Label Studio (TEST_LABEL_STUDIO_URL): its local-files document root is "
            "unknown here; run without TEST_LABEL_STUDIO_URL to start one"
        )
    root = Path(label_studio.process.data_dir)
    folder = root / f"local-images-{tmp_path.name}"
    folder.mkdir()
    for name, data, _ in digit_images(N_IMAGES, size=32, seed=5):
        (folder / name).write_bytes(data)
    config = write_config(
        tmp_path,
        label_studio,
        url=proxy.url,
        model={"backbone": "small_cnn", "image_size": 32, "committee_size": 2},
        loop={"schedule_interval_minutes": None},
    )
    settings = load_settings(config, environ={})
    store = Store(settings.store.url)
    store.upgrade()
    with LabelStudio(settings.label_studio) as ls:
        project = ls.create_project("local files", DEMO_CONFIG)
        storage = ls._call(
            "POST",
            "/api/storages/localfiles/",
            json={
                "project": project,
                "path": str(folder),
                "regex_filter": r".*\.png",
                "use_blob_urls": True,
                "title": "digits on disk",
            },
        )
        ls._call("POST", f"/api/storages/localfiles/{storage['id']}/sync")
        tasks = list(ls.iter_tasks(project))
        assert len(tasks) == N_IMAGES
        assert all(t["data"]["image"].startswith("/data/local-files/?d=") for t in tasks)

        def cycle() -> dict[str, Any]:
            run = run_cycle_once(store, make_runner(settings, store), project, trigger="manual")
            assert run is not None and run.state == "succeeded", run
            with store.session() as session:
                return cycle_records.to_dict(cycle_records.history(session, project, 1)[0])

        proxy.clear()
        first = cycle()
        assert len(proxy.data_paths) == N_IMAGES  # each image once
        assert len(set(proxy.data_paths)) == N_IMAGES
        assert first["counts"]["featurize"]["fetched"] == N_IMAGES

        proxy.clear()
        second = cycle()
        assert proxy.data_paths == []  # nothing fetched: every task's reference is unchanged
        assert second["counts"]["featurize"]["fetched"] == 0
        assert second["counts"]["featurize"]["embedded"] == N_IMAGES
    store.dispose()
