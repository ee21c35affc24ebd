"""A throwaway PostgreSQL server for the test session (``pytest --database postgresql``).

Started from the Debian ``postgresql`` package's binaries (``make postgres`` installs it) in a
temporary data directory, on 127.0.0.1 and a free port, with trust authentication; stopped and
deleted at the end of the session. Every test that builds settings gets a database of its own, so
tests stay as isolated as with one SQLite file each. As root, the server runs as the package's
``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from backend.lsprocess import free_port

USER = "labelloop"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(
            f"{name} not found: install PostgreSQL (`make postgres` or apt-get install postgresql)"
        )
    return found


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_server_user(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:1])} failed: {done.stderr.strip()[-2000:]}")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields the URL of its maintenance database ``postgres``."""
    data = Path(tempfile.mkdtemp(prefix="labelloop-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    cluster, port = str(data / "db"), free_port()
    try:
        _run([_binary("initdb"), "-D", cluster, "-U", USER, "--auth=trust", "-E", "UTF8"])
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(data / "server.log")
        _run([_binary("pg_ctl"), "-D", cluster, "-o", options, "-l", log, "-w", "start"])
        try:
            yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
        finally:
            _run([_binary("pg_ctl"), "-D", cluster, "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(data, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """Create an empty database on the server; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"
