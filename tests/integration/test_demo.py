"""`make run`'s entry point, non-interactively: start, check the demo project is connected, stop."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backend.lsprocess import free_port
from tests.integration.lsserver import label_studio_binary

pytestmark = pytest.mark.integration


def test_demo_starts_connects_and_stops(tmp_path: Path) -> None:
    ls_port, backend_port = free_port(), free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend.cli",
            "demo",
            "--check",
            "--dir",
            str(tmp_path),
            "--port",
            str(ls_port),
            "--ls-bin",
            str(label_studio_binary()),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": "/usr/bin:/bin",
            "LABELLOOP_SERVER__PORT": str(backend_port),
            "LABELLOOP_SERVER__LOG_LEVEL": "WARNING",
            "HOME": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Label Studio: http://127.0.0.1:{ls_port}/projects/" in result.stdout
    assert "login: admin@labelloop.local" in result.stdout
    assert "demo check passed" in result.stdout
    # Both servers are gone: nothing listens on their ports any more.
    for port in (ls_port, backend_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening"
