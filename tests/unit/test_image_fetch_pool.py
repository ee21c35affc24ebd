"""Image fetching through the pooled session: keep-alive, retries with backoff, total deadline.

A real HTTP/1.1 server on 127.0.0.1 stands in for Label Studio.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from backend.labelstudio.images import ImageError, ImageResolver
from backend.settings import ImageSettings, LabelStudioSettings
from tests.unit.test_images import png


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 2.0  # an idle kept-alive connection ends its thread, so the server can close
    server: Flaky

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
            status = self.server.failures.pop(0) if self.server.failures else 200
        if status == "slow":
            time.sleep(0.6)
            status = 200
        body = png() if status == 200 else b"busy"
        self.send_response(int(status))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)  # fails when the client gave up waiting (the timeout test)


class Flaky(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the request threads

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.failures: list[int | str] = []
        self.connections = self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Flaky]:
    srv = Flaky()
    thread = threading.Thread(target=srv.serve_forever, name="flaky-image-server")
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def resolver(server: Flaky, **images: Any) -> ImageResolver:
    ls = LabelStudioSettings(url=server.url, token="t" * 20)
    return ImageResolver(ls, ImageSettings(**images))


def test_fetches_reuse_one_connection(server: Flaky) -> None:
    with resolver(server) as res:
        for i in range(20):
            assert res.fetch(f"/data/upload/1/{i}.png") == png()
    assert (server.requests, server.connections) == (20, 1)


def test_5xx_answers_are_retried_with_backoff(server: Flaky) -> None:
    server.failures = [503, 502]
    started = time.monotonic()
    with resolver(server, retries=3, backoff_s=0.1) as res:
        assert res.fetch("/data/upload/1/a.png") == png()
    assert server.requests == 3
    assert time.monotonic() - started >= 0.1  # urllib3 waits 0, then 0.2 s (0.1 x 2)


def test_retries_give_up_with_the_last_status(server: Flaky) -> None:
    server.failures = [500, 500, 500]
    with resolver(server, retries=2, backoff_s=0.0) as res, pytest.raises(ImageError, match="500"):
        res.fetch("/data/upload/1/a.png")
    assert server.requests == 3


def test_a_read_timeout_is_retried(server: Flaky) -> None:
    server.failures = ["slow"]
    with resolver(server, retries=1, backoff_s=0.0, timeout_s=0.2) as res:
        assert res.fetch("/data/upload/1/a.png") == png()
    assert server.requests == 2
