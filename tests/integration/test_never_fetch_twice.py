"""Images served by a REAL Label Studio's local-files storage, as real projects serve them: the
first cycle fetches each image once, the second fetches none (counted on a proxy in front of
Label Studio: every request to a ``/data/`` path)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from backend.cycle import make_runner
from backend.demo import DEMO_CONFIG, digit_images
from backend.labelstudio.client import LabelStudio
from backend.scheduler import run_cycle_once
from backend.settings import load_settings
from backend.store import cycles
from backend.store.db import Store

N_IMAGES = 24
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"}


class Proxy(ThreadingHTTPServer):
    """Forwards every request to Label Studio and counts those for ``/data/`` paths."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.data_paths: list[str] = []
        self.lock = threading.Lock()
        self.http = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5.0
    server: Proxy

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        if self.path.startswith("/data/"):
            with self.server.lock:
                self.server.data_paths.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", *HOP_BY_HOP}}
        answer = self.server.http.request(
            self.command,
            self.server.upstream + self.path,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=60,
        )
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward


@pytest.fixture
def proxy(label_studio: Any) -> Iterator[Proxy]:
    server = Proxy(label_studio.url)
    thread = threading.Thread(target=server.serve_forever, name="ls-counting-proxy")
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    server.http.close()
    thread.join()


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
    config = tmp_path / "labelloop.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "label_studio": {"url": proxy.url, "token": label_studio.token},
                "store": {"data_dir": str(tmp_path / "data")},
                "model": {"backbone": "small_cnn", "image_size": 32, "committee_size": 2},
                "loop": {"schedule_interval_minutes": None},
            }
        )
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
                return cycles.to_dict(cycles.history(session, project, 1)[0])

        proxy.data_paths.clear()
        first = cycle()
        assert len(proxy.data_paths) == N_IMAGES  # each image once
        assert len(set(proxy.data_paths)) == N_IMAGES
        assert first["counts"]["featurize"]["fetched"] == N_IMAGES

        proxy.data_paths.clear()
        second = cycle()
        assert proxy.data_paths == []  # nothing fetched: every task's reference is unchanged
        assert second["counts"]["featurize"]["fetched"] == 0
        assert second["counts"]["featurize"]["embedded"] == N_IMAGES
    store.dispose()
