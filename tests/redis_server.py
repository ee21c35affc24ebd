"""A throwaway Redis server for tests of ``loop.executor: rq`` (Debian's ``redis-server``).

Started on 127.0.0.1 and a free port with persistence off, stopped at the end of the session;
``make redis`` installs the package when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from backend.cli.lsprocess import free_port
from tests.processes import stop_process


@contextmanager
def redis_server() -> Iterator[str]:
    """Start a server; yields its URL (database 0)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = Redis.from_url(url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except RedisConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop_process(process)
