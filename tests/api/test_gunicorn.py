"""``labelloop serve --workers N``: the API in gunicorn worker processes (scale-out's ``api``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from backend.cli.lsprocess import free_port
from backend.cli.main import main
from backend.store import repo
from backend.store.db import Store
from tests.conftest import SINGLE_CONFIG
from tests.processes import stop_process


def _config(tmp_path: Path, port: int, **loop: object) -> Path:
    path = tmp_path / "api.yaml"
    data = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "WARNING"},
        "store": {"data_dir": str(tmp_path / "data")},
        "loop": loop,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _post(url: str, body: dict[str, object]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_workers_serve_and_store_webhooks_then_stop_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port, run_scheduler=False)
    labelloop = Path(sys.executable).with_name("labelloop")
    process = subprocess.Popen(
        [str(labelloop), "--config", str(config), "serve", "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HOME": str(tmp_path / "home")},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    assert json.load(response)["status"] == "UP"
                break
            except OSError:
                assert process.poll() is None, "serve --workers exited early"
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.2)
        # The gunicorn master forks its workers one after the other, and the first can answer
        # /health before the second exists.
        while len(_children(process.pid)) < 2:
            assert time.monotonic() < deadline, "the second worker never started"
            time.sleep(0.1)
        assert len(_children(process.pid)) == 2  # the gunicorn master and two workers
        setup = {"project": "3.1", "schema": SINGLE_CONFIG}  # as Label Studio connects it
        assert _post(f"{base}/setup", setup) == 200

        def deliver(ann_id: int) -> int:
            event = {
                "action": "ANNOTATION_CREATED",
                "project": {"id": 3, "label_config": SINGLE_CONFIG},
                "annotation": {
                    "id": ann_id,
                    "task": ann_id,
                    "result": [],
                    "updated_at": "2026-01-01T10:00:00Z",
                },
            }
            return _post(f"{base}/webhook", event)

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(deliver, range(1, 21))) == [200] * 20
        store = Store(f"sqlite:///{tmp_path / 'data' / 'labelloop.db'}")
        try:
            with store.session() as session:
                # Stored by whichever worker took the request; applied by nobody here (the
                # scheduler process does that).
                assert len(repo.pending_events(session)) == 20
        finally:
            store.dispose()
        # Nothing written outside the configured data directory (gunicorn's control socket).
        assert not (tmp_path / "home").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            stop_process(process)
        elif process.stderr is not None:
            process.stderr.close()


@pytest.mark.parametrize(
    ("workers", "loop", "message"),
    [
        (2, {}, "needs loop.run_scheduler: false"),
        (0, {"run_scheduler": False}, "--workers must be at least 1"),
    ],
)
def test_workers_are_refused_where_they_would_break_the_deployment(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workers: int,
    loop: dict[str, object],
    message: str,
) -> None:
    config = _config(tmp_path, free_port(), **loop)
    assert main(["--config", str(config), "serve", "--workers", str(workers)]) == 2
    assert message in capsys.readouterr().err
