"""``labelloop demo`` (what ``make run`` starts): a local Label Studio, labelloop, a demo project.

The demo images are scikit-learn's handwritten digits (they ship inside the scikit-learn wheel), so
it works offline. Everything listens on 127.0.0.1 and stops on Ctrl-C.
"""

from __future__ import annotations

import argparse
import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from werkzeug.serving import BaseWSGIServer, make_server

from backend.lsprocess import LabelStudioProcess, free_port, start_label_studio
from backend.settings import Settings, with_overrides

log = logging.getLogger(__name__)
DEMO_TITLE = "labelloop demo: handwritten digits"
DEMO_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="digit" toName="image" choice="single" showInline="true">
    <Choice value="0"/><Choice value="1"/><Choice value="2"/><Choice value="3"/>
    <Choice value="4"/><Choice value="5"/><Choice value="6"/><Choice value="7"/>
    <Choice value="8"/><Choice value="9"/>
  </Choices>
</View>"""


def digit_images(count: int, *, size: int = 96, seed: int = 0) -> Iterator[tuple[str, bytes, int]]:
    """(file name, PNG bytes, true digit) for ``count`` digits, in a fixed shuffled order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))[:count]
    for i in order:
        pixels = (255 - digits.images[i] * 255 / 16).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        yield f"digit_{i:04d}.png", buffer.getvalue(), int(digits.target[i])


@dataclass
class ServedBackend:
    url: str
    server: BaseWSGIServer
    thread: threading.Thread
    app: Any

    def stop(self) -> None:
        from backend.app import shutdown

        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()
        shutdown(self.app)


def serve_in_thread(settings: Settings, *, loop: bool = False) -> ServedBackend:
    """Run the labelloop app (with its inbox worker) on a background thread.

    Args:
        settings: the settings to serve with.
        loop: also run the scheduler with the real cycle, as ``labelloop serve`` does.
    """
    from backend.app import create_app
    from backend.cycle import make_runner
    from backend.store.db import Store

    store = Store(settings.store.url)
    store.upgrade()
    runner = make_runner(settings, store) if loop else None
    app = create_app(settings, store=store, start_worker=True, runner=runner)
    server = make_server(settings.server.host, settings.server.port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="labelloop-http", daemon=True)
    thread.start()
    return ServedBackend(f"http://{settings.server.host}:{server.server_port}", server, thread, app)


def _demo_settings(settings: Settings, ls: LabelStudioProcess, root: Path) -> Settings:
    port = free_port(settings.server.port)
    return with_overrides(
        settings,
        {
            "label_studio": {"url": ls.url, "token": ls.token},
            "server": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
            "store": {"data_dir": str(root / "data"), "database_url": None},
        },
    )


def ensure_demo_project(client: Any, *, count: int = 300) -> int:
    """The demo project's id, creating it with ``count`` digit images on first run."""
    for project in client.list_projects():
        if project.get("title") == DEMO_TITLE:
            return int(project["id"])
    project_id = int(client.create_project(DEMO_TITLE, DEMO_CONFIG))
    files = [(name, data) for name, data, _ in digit_images(count)]
    client.upload_images(project_id, files)
    return project_id


@contextmanager
def running_demo(
    settings: Settings, root: Path, ls_binary: str, ls_port: int
) -> Iterator[tuple[LabelStudioProcess, ServedBackend, int]]:
    from backend.cli import cmd_connect
    from backend.labelstudio.client import LabelStudio

    ls = start_label_studio(ls_binary, root / "label-studio", port=ls_port)
    backend: ServedBackend | None = None
    try:
        demo = _demo_settings(settings, ls, root)
        backend = serve_in_thread(demo, loop=True)
        project_id = ensure_demo_project(LabelStudio(demo.label_studio))
        cmd_connect(demo, argparse.Namespace(project=project_id))
        yield ls, backend, project_id
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Start everything, print where to go, wait for Ctrl-C (or verify and stop with --check)."""
    with running_demo(settings, args.dir.resolve(), args.ls_bin, args.port) as (ls, be, pid):
        print(
            f"\nLabel Studio: {ls.url}/projects/{pid}/data\n"
            f"  login: {ls.username}  password: {ls.password}\n"
            f"labelloop backend: {be.url} (connected to project {pid})\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        if args.check:
            from backend.labelstudio.client import LabelStudio

            client = LabelStudio(_demo_settings(settings, ls, args.dir.resolve()).label_studio)
            backends = client.list_ml_backends(pid)
            if not any(b.get("url") == be.url for b in backends):
                print("demo check failed: backend not connected", flush=True)
                return 1
            print(f"demo check passed: project {pid} connected to {be.url}", flush=True)
            return 0
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
    return 0
