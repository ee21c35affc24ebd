"""``labelloop demo`` (what ``make run`` starts): a local Label Studio, labelloop, a demo project.

The demo images are scikit-learn's handwritten digits (they ship inside the scikit-learn wheel), so
it works offline. Everything listens on 127.0.0.1 and stops on Ctrl-C, SIGTERM, or when the
process that started the demo (``make run``) goes away.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from werkzeug.serving import BaseWSGIServer, make_server

from backend.cli.lsprocess import LabelStudioProcess, next_free_port, start_label_studio
from backend.files import atomic_write
from backend.settings import Settings, with_overrides
from backend.simulate.sets import digit_images

log = logging.getLogger(__name__)
FIRST_CYCLE_TIMEOUT_S = 600.0
DEMO_TITLE = "labelloop demo: handwritten digits"
DEMO_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="digit" toName="image" choice="single" showInline="true">
    <Choice value="0"/><Choice value="1"/><Choice value="2"/><Choice value="3"/>
    <Choice value="4"/><Choice value="5"/><Choice value="6"/><Choice value="7"/>
    <Choice value="8"/><Choice value="9"/>
  </Choices>
</View>"""


@dataclass
class ServedBackend:
    url: str
    server: BaseWSGIServer
    thread: threading.Thread
    app: Any

    def stop(self) -> None:
        from backend.api.app import shutdown

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
    from backend.api.app import create_app
    from backend.runtime.runner import make_runner
    from backend.store.db import Store

    store = Store(settings.store.url)
    store.upgrade()
    runner = make_runner(settings, store) if loop else None
    app = create_app(settings, store=store, start_worker=True, runner=runner)
    server = make_server(settings.server.host, settings.server.port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="labelloop-http", daemon=True)
    thread.start()
    return ServedBackend(f"http://{settings.server.host}:{server.server_port}", server, thread, app)


#: The demo's admin token name: the user name of the dashboard's browser login.
DEMO_ADMIN = "admin"


def demo_admin_token(root: Path) -> str:
    """The demo's admin token, made once and kept under ``root`` (the dashboard's password)."""
    path = root / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as sink:
            sink.write(secrets.token_urlsafe(18).encode())
    return path.read_text().strip()


def demo_overrides(ls: LabelStudioProcess, root: Path, port: int) -> dict[str, Any]:
    """The settings the demo changes: where its Label Studio is, its port, its data, and the
    admin token that opens the dashboard."""
    return {
        "label_studio": {"url": ls.url, "token": ls.token},
        "server": {
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "admin_tokens": {DEMO_ADMIN: demo_admin_token(root)},
        },
        "store": {"data_dir": str(root / "data"), "database_url": None},
    }


def write_demo_config(path: Path, overrides: dict[str, Any]) -> None:
    """The demo's settings as a config file, so any CLI command can run against the demo."""
    text = (
        "# Written by `labelloop demo` at every start: the running demo's Label Studio, port\n"
        "# and data. Use it with any command: labelloop --config THIS_FILE status\n"
        + yaml.safe_dump(overrides, sort_keys=False)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as sink:
        sink.write(text.encode())


def ensure_demo_project(client: Any, *, count: int = 300) -> int:
    """The demo project's id, creating it with ``count`` digit images on first run."""
    for project in client.list_projects():
        if project.get("title") == DEMO_TITLE:
            return int(project["id"])
    project_id = int(client.create_project(DEMO_TITLE, DEMO_CONFIG))
    files = [(name, data) for name, data, _ in digit_images(count)]
    client.upload_images(project_id, files)
    return project_id


@dataclass(frozen=True)
class RunningDemo:
    ls: LabelStudioProcess
    backend: ServedBackend
    project_id: int
    config_file: Path
    settings: Settings


@contextmanager
def running_demo(
    settings: Settings, root: Path, ls_binary: str, ls_port: int
) -> Iterator[RunningDemo]:
    """Label Studio, labelloop (with its scheduler) and the connected demo project.

    Yields once the first cycle has ordered the queue, so "Label All Tasks" serves labelloop's
    cold-start order from the first task. Both servers stop when the block exits.
    """
    from backend.cli.common import connect_project
    from backend.labelstudio.client import LabelStudio

    ls = start_label_studio(ls_binary, root / "label-studio", port=ls_port)
    backend: ServedBackend | None = None
    try:
        overrides = demo_overrides(ls, root, next_free_port(settings.server.port))
        demo = with_overrides(settings, overrides)
        config_file = root / "labelloop.yaml"
        write_demo_config(config_file, overrides)
        backend = serve_in_thread(demo, loop=True)
        project_id = ensure_demo_project(LabelStudio(demo.label_studio))
        connected = connect_project(demo, project_id)
        wait_for_cycle(demo, connected.cycle_id, timeout=FIRST_CYCLE_TIMEOUT_S)
        yield RunningDemo(ls, backend, project_id, config_file, demo)
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()


def wait_for_cycle(settings: Settings, cycle_id: int, *, timeout: float) -> str:
    """Wait until cycle ``cycle_id`` has finished; its final state (or "timeout")."""
    from backend.store.db import Store
    from backend.store.models import Cycle

    store = Store(settings.store.url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with store.session() as session:
                cycle = session.get(Cycle, cycle_id)
                state = cycle.state if cycle is not None else "missing"
                error = cycle.error if cycle is not None else None
            if state in ("succeeded", "failed", "missing"):
                if state != "succeeded":
                    log.error("first cycle %d %s: %s", cycle_id, state, error)
                return state
            time.sleep(0.5)
    finally:
        store.dispose()
    log.warning("first cycle %d still running after %.0f s", cycle_id, timeout)
    return "timeout"


def _stop_on_signals() -> dict[int, Any]:
    """SIGTERM (and SIGHUP) stop the demo as Ctrl-C does, so both servers are shut down."""

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}


def _wait_until_stopped(parent: int) -> None:
    """Sleep until Ctrl-C or SIGTERM, or until the parent (e.g. ``make``) is gone."""
    while os.getppid() == parent:
        time.sleep(0.5)
    log.info("the parent process is gone: stopping")


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Start everything, print where to go, wait for Ctrl-C or SIGTERM."""
    parent = os.getppid()
    previous = _stop_on_signals()
    try:
        print("starting Label Studio and labelloop, then ordering the queue...", flush=True)
        with running_demo(settings, args.dir.resolve(), args.ls_bin, args.port) as demo:
            _print_welcome(demo)
            _wait_until_stopped(parent)
    except KeyboardInterrupt:
        print("\nstopped Label Studio and labelloop.", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _print_welcome(demo: RunningDemo) -> None:
    config = _shown_path(demo.config_file)
    print(
        f"\nLabel Studio: {demo.ls.url}/projects/{demo.project_id}/data\n"
        f"  login: {demo.ls.username}  password: {demo.ls.password}\n"
        f"labelloop backend: {demo.backend.url} (connected to project {demo.project_id}; "
        f"dashboard {demo.backend.url}/dashboard/{demo.project_id})\n"
        f"  dashboard login: {DEMO_ADMIN}  password: {_admin_password(demo.settings)}\n"
        f"CLI against this demo: labelloop --config {config} cycle --project {demo.project_id}\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


def _admin_password(settings: Settings) -> str:
    return settings.server.admin_tokens[DEMO_ADMIN].get_secret_value()


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to type)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
