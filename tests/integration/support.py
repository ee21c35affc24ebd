"""What the integration modules share: a backend config for the session's Label Studio, a
choices annotation, waiting for a condition, a proxy that records what reaches Label Studio, and
the digits loop (a served backend plus a simulated annotator on "Label All Tasks")."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

from backend.cli.demo import DEMO_CONFIG, ServedBackend, serve_in_thread
from backend.cli.lsprocess import free_port
from backend.labelstudio.client import LabelStudio
from backend.runtime.lease import CycleRun, run_cycle_once
from backend.runtime.runner import make_runner
from backend.settings import Settings, load_settings
from backend.simulate.sets import digit_images
from backend.store import cycle_records
from backend.store.db import Store

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"}


def write_config(
    root: Path, label_studio: Any, *, url: str | None = None, **sections: dict[str, Any]
) -> Path:
    """``root/labelloop.yaml`` for a backend on a free port talking to ``label_studio`` (or to
    ``url``, e.g. a proxy in front of it), data under ``root/data``, quiet logs; ``sections``
    add to or override those (``model={...}``, ``strategy={...}``, ``server={...}``)."""
    port = free_port()
    values: dict[str, dict[str, Any]] = {
        "label_studio": {"url": url or label_studio.url, "token": label_studio.token},
        "server": {"port": port, "public_url": f"http://127.0.0.1:{port}", "log_level": "WARNING"},
        "store": {"data_dir": str(root / "data")},
    }
    for name, fields in sections.items():
        values[name] = {**values.get(name, {}), **fields}
    path = root / "labelloop.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def choice(label: str, from_name: str = "digit") -> list[dict[str, Any]]:
    """An annotation result choosing ``label`` on the image."""
    return [
        {
            "from_name": from_name,
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


def wait_for(condition: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Poll ``condition`` every 0.1 s; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout:g} s")
        time.sleep(0.1)


class Proxy(ThreadingHTTPServer):
    """Forwards every request to Label Studio and records each path it forwarded."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.http = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def data_paths(self) -> list[str]:
        """The forwarded requests for ``/data/`` paths (images), in order."""
        with self.lock:
            return [p for p in self.paths if p.startswith("/data/")]

    def clear(self) -> None:
        with self.lock:
            self.paths.clear()


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5.0
    server: Proxy

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        with self.server.lock:
            self.server.paths.append(self.path)
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


@contextmanager
def forwarding_proxy(upstream: str) -> Iterator[Proxy]:
    """A :class:`Proxy` in front of ``upstream``, served on a thread while the block runs."""
    server = Proxy(upstream)
    thread = threading.Thread(target=server.serve_forever, name="ls-recording-proxy")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        server.http.close()
        thread.join()


class Served:
    """A labelloop backend served on a thread against the session's Label Studio, its settings,
    client and store; ``sections`` as for :func:`write_config`."""

    def __init__(self, label_studio: Any, root: Path, **sections: dict[str, Any]) -> None:
        self.config = write_config(root, label_studio, **sections)
        self.settings: Settings = load_settings(self.config, environ={})
        self.ls = LabelStudio(self.settings.label_studio)
        self.store = Store(self.settings.store.url)
        self.store.upgrade()
        self.backend: ServedBackend | None = None

    def start(self) -> None:
        self.backend = serve_in_thread(self.settings)

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.stop()
            self.backend = None


class Loop(Served):
    """A served backend on one digits project and an annotator labeling what Label Studio serves.

    Cycles run through the scheduler's code (``run_cycle_once``) only when the test asks.
    """

    def __init__(self, label_studio: Any, root: Path) -> None:
        super().__init__(
            label_studio,
            root,
            model={"image_size": 96, "committee_size": 3, "cv_folds": 4, "max_epochs": 100},
            strategy={"batch_size": 20, "cold_start_labels": 20, "review_max_flags": 20},
            loop={"run_scheduler": False},
        )
        self.truth: dict[int, str] = {}
        self.project = 0

    def cycle(self, runner: Any = None) -> CycleRun:
        run = run_cycle_once(
            self.store,
            runner or make_runner(self.settings, self.store),
            self.project,
            trigger="manual",
            lease_s=60,
        )
        assert run is not None
        return run

    def label_next(self, n: int, wrong: frozenset[int] | set[int] = frozenset()) -> list[int]:
        """Label the next ``n`` tasks Label Studio serves; ``wrong`` positions get a wrong label."""
        served = []
        for i in range(n):
            task = self.ls.next_task(self.project)
            assert task is not None
            label = self.truth[task["id"]]
            if i in wrong:
                label = str((int(label) + 1) % 10)
            self.ls.create_annotation(task["id"], choice(label))
            served.append(int(task["id"]))
        return served

    def last_cycle(self) -> dict[str, Any]:
        with self.store.session() as session:
            return cycle_records.to_dict(cycle_records.history(session, self.project, 1)[0])


@contextmanager
def digits_loop(
    label_studio: Any, root: Path, name: str, n_images: int, seed: int
) -> Iterator[Loop]:
    """A :class:`Loop` on a new project of ``n_images`` generated digits, connected and served."""
    loop = Loop(label_studio, root)
    loop.project = loop.ls.create_project(name, DEMO_CONFIG)
    images = list(digit_images(n_images, size=64, seed=seed))
    ids = loop.ls.upload_images(loop.project, [(file, data) for file, data, _ in images])
    loop.truth = {task_id: str(digit) for task_id, (_, _, digit) in zip(ids, images, strict=True)}
    loop.start()
    try:
        assert loop.ls.connect_ml_backend(
            loop.project, loop.settings.server.public_url, "labelloop"
        )
        yield loop
    finally:
        loop.stop()
        loop.store.dispose()
        loop.ls.close()
