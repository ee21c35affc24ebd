"""``labelloop serve``: the embedded waitress server as a subprocess, its flags and refusals."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.cli.lsprocess import free_port
from backend.cli.main import main, serve_overrides
from backend.cli.serve import Refused, check_exposure, is_loopback
from backend.settings import ServerSettings
from tests.processes import stop_process


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def _get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return int(response.status), response.read()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``labelloop serve --host 127.0.0.1 --port P`` (the flags override the config's port)."""
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": 1, "log_level": "WARNING", "max_body_bytes": 4096},
                "store": {"data_dir": str(tmp_path / "data")},
                "loop": {"schedule_interval_minutes": None},
            }
        )
    )
    labelloop = Path(sys.executable).with_name("labelloop")
    command = [str(labelloop), "--config", str(config), "serve", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                _get(f"{base}/health", timeout=2)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        yield base, process
    finally:
        stop_process(process)


def test_half_open_connections_hold_no_thread_and_health_still_answers(
    server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """300 half-sent requests held 309 threads of werkzeug's development server."""
    base, process = server
    port = int(base.rsplit(":", 1)[1])
    before = _threads(process.pid)
    slow: list[socket.socket] = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
            sock.sendall(head if i % 2 else b"GET /health HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        status, body = _get(f"{base}/health")
        assert status == 200 and json.loads(body)["status"] == "UP"
        during = _threads(process.pid)
        assert during <= before + 2, (before, during)  # waitress' pool is fixed in size
    finally:
        for sock in slow:
            sock.close()
    assert _get(f"{base}/health")[0] == 200


def _reply(sock: socket.socket) -> tuple[bytes, dict[str, str], Any]:
    """Status line, headers and parsed JSON body of the one response on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(4096)
        assert chunk, body
        body += chunk
    return status.encode(), headers, json.loads(body)


def test_bodies_over_the_limit_are_413_json_chunked_or_not(
    server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """A 70 MB chunked body got a 400 where a 413 is promised; waitress answered in plain
    text where every other error of the API is JSON."""
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    for framing in (b"Transfer-Encoding: chunked\r\n", b"Content-Length: 70000000\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + framing
                + b"\r\n"
            )
            chunk = b"a" * 65536
            try:
                for _ in range(4):
                    if framing.startswith(b"Transfer"):
                        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    else:
                        sock.sendall(chunk)
            except OSError:
                pass  # the server may close as soon as it has answered
            status, headers, body = _reply(sock)
        assert status.startswith(b"HTTP/1.1 413"), status
        assert headers["content-type"] == "application/json"
        assert body["error"] == "request_entity_too_large" and body["detail"], body


def test_a_malformed_request_is_a_400_json_error(
    server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        status, headers, body = _reply(sock)
    assert status.startswith(b"HTTP/1.1 400"), status
    assert headers["content-type"] == "application/json"
    assert body["error"] == "bad_request" and body["detail"], body
    assert _get(f"{base}/health")[0] == 200


def test_serve_refuses_a_public_address_without_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"store": {"data_dir": str(tmp_path / "data")}}))
    assert main(["--config", str(config), "serve", "--host", "0.0.0.0"]) == 2
    message = capsys.readouterr().err
    assert "server.basic_auth_user" in message and "server.allow_anonymous" in message
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_exposure_rules() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_exposure(ServerSettings(host=host))
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(Refused):
            check_exposure(ServerSettings(host=host))
        check_exposure(ServerSettings(host=host, allow_anonymous=True))
        check_exposure(
            ServerSettings(host=host, basic_auth_user="ls", basic_auth_password="pw")  # type: ignore[arg-type]
        )


def test_host_and_port_flags_override_settings() -> None:
    both = argparse.Namespace(host="0.0.0.0", port=8123)
    assert serve_overrides(both) == {"server": {"host": "0.0.0.0", "port": 8123}}
    assert serve_overrides(argparse.Namespace(host=None, port=None)) == {"server": {}}
