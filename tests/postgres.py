"""A throwaway PostgreSQL server for the test session (``pytest --database postgresql``).

Started from the Debian ``postgresql`` package's binaries (``make postgres`` installs it) in a
temporary data directory, on a Unix socket there, with trust authentication; stopped and deleted
at the end of the session. Every test that builds settings gets a database of its own (dropped
after the test), so tests stay as isolated as with one SQLite file each. As root, the server runs
as the package's ``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
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
from sqlalchemy.engine import make_url

USER = "labelloop"


def _version(path: str) -> tuple[int, ...]:
    """(15,) from /usr/lib/postgresql/15/bin/initdb, so 15 sorts above 9.6."""
    folder = Path(path).parent.parent.name
    return tuple(int(part) for part in folder.split(".") if part.isdigit())


def _binary(name: str) -> str:
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version, reverse=True)
    found = shutil.which(name) or next(iter(installed), None)
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
def postgres_server(*, fsync: bool = False) -> Iterator[str]:
    """Start a server; yields the URL of its maintenance database ``postgres``.

    It listens on a Unix socket in its own temporary folder only (no TCP port to race for).
    Tests run it with ``fsync=off`` (nothing they store must survive a power cut); a benchmark
    of durable writes asks for ``fsync=True``, as a production server runs.
    """
    data = Path(tempfile.mkdtemp(prefix="labelloop-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    cluster, port = str(data / "db"), 5432
    try:
        _run([_binary("initdb"), "-D", cluster, "-U", USER, "--auth=trust", "-E", "UTF8"])
        options = f"-p {port} -k {data} -c listen_addresses='' -c fsync={'on' if fsync else 'off'}"
        log = str(data / "server.log")
        try:
            _run([_binary("pg_ctl"), "-D", cluster, "-o", options, "-l", log, "-w", "start"])
            yield f"postgresql+psycopg://{USER}@/postgres?host={data}&port={port}"
        finally:  # also after a start that timed out: never leave a server behind
            with contextlib.suppress(RuntimeError):
                _run([_binary("pg_ctl"), "-D", cluster, "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _maintenance(server_url: str, statement: str) -> None:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def fresh_database(server_url: str) -> str:
    """Create an empty database on the server; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _maintenance(server_url, f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, url: str) -> None:
    """Drop a database :func:`fresh_database` made (connections still open are closed)."""
    name = make_url(url).database
    _maintenance(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
