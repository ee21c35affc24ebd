"""`make run`'s entry point as a user meets it: start, label in labelloop's order, use the CLI,
stop with SIGTERM (what `kill` or a service manager sends) and leave nothing running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from backend.cli.lsprocess import free_port
from tests.integration.lsserver import label_studio_binary

pytestmark = pytest.mark.integration
READY = "Press Ctrl-C to stop."


@dataclass
class Demo:
    process: subprocess.Popen[str]
    dir: Path
    ls_port: int
    backend_port: int
    output: list[str]


def _env(home: Path, port: int) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "LABELLOOP_SERVER__PORT": str(port),
        "HOME": str(home),
    }


def _read_until_ready(process: subprocess.Popen[str], timeout: float) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if READY in line:
            return lines
    pytest.fail("the demo did not get ready:\n" + "".join(lines))


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    root = tmp_path_factory.mktemp("demo")
    ls_port, backend_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend.cli",
            "demo",
            "--dir",
            str(root),
            "--port",
            str(ls_port),
            "--ls-bin",
            str(label_studio_binary().absolute()),  # the demo runs in another directory
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=root,
        env=_env(root, backend_port),
    )
    try:
        lines = _read_until_ready(process, timeout=600)
        # Keep reading its log so a full pipe never blocks the demo.
        threading.Thread(target=_drain, args=(process, lines), daemon=True).start()
        yield Demo(process, root, ls_port, backend_port, lines)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_prints_where_to_go_and_the_cli_line(demo: Demo) -> None:
    out = "".join(demo.output)
    assert f"Label Studio: http://127.0.0.1:{demo.ls_port}/projects/" in out
    assert "login: admin@labelloop.local" in out
    assert "CLI against this demo: labelloop --config labelloop.yaml cycle --project 1" in out
    config = yaml.safe_load((demo.dir / "labelloop.yaml").read_text())
    assert config["label_studio"]["url"] == f"http://127.0.0.1:{demo.ls_port}"
    assert config["server"]["port"] == demo.backend_port
    # The printed line's config works for any command, from the directory it was printed for.
    status = subprocess.run(
        [sys.executable, "-m", "backend.cli", "--config", "labelloop.yaml", "status", "--json"],
        capture_output=True,
        text=True,
        cwd=demo.dir,
        env=_env(demo.dir, demo.backend_port),
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert '"tasks": 300' in status.stdout


def test_label_all_tasks_follows_the_cold_start_order_before_any_label(demo: Demo) -> None:
    url = f"http://127.0.0.1:{demo.ls_port}"
    token = yaml.safe_load((demo.dir / "labelloop.yaml").read_text())["label_studio"]["token"]
    auth = {"Authorization": f"Token {token}"}
    project = requests.get(f"{url}/api/projects/1", headers=auth, timeout=30).json()
    version = project["model_version"]
    assert version.startswith("labelloop-p1-") and version.endswith("-cold"), version
    assert project["sampling"] == "Uncertainty sampling"
    assert project["num_tasks_with_annotations"] == 0
    predictions = requests.get(
        f"{url}/api/predictions/", params={"project": 1}, headers=auth, timeout=60
    ).json()
    scores = {p["task"]: p["score"] for p in predictions if p["model_version"] == version}
    assert len(scores) == 300  # every unlabeled task has its place in the order
    served = requests.get(f"{url}/api/projects/1/next", headers=auth, timeout=60).json()
    assert scores[served["id"]] == min(scores.values())


def test_sigterm_stops_both_servers_and_leaves_no_process(demo: Demo) -> None:
    assert _listening(demo.ls_port) and _listening(demo.backend_port)
    children = subprocess.run(
        ["pgrep", "-f", f"label-studio start .*--port {demo.ls_port}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert children, "Label Studio's process was not found"
    demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(60) == 0, "".join(demo.output[-30:])
    for port in (demo.ls_port, demo.backend_port):
        assert not _listening(port), f"port {port} still listening"
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
