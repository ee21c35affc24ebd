"""Engine, sessions and schema migrations of the state store."""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


#: The PostgreSQL advisory lock that serializes migrations (any fixed 64-bit number).
MIGRATION_LOCK_KEY = 0x6C6162656C6C6F6F  # "labelloo"
#: Seconds a SQLite connection waits for a lock another connection holds.
BUSY_TIMEOUT_S = 10.0
#: How often :func:`begin_immediate` tries again for SQLite's write lock.
LOCK_POLL_S = 0.001


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the webhook write while a cycle reads; FULL makes an acknowledged event survive a
    # crash or power loss, which is the whole point of the inbox.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_transient(exc: BaseException) -> bool:
    """A database error that may pass when tried again (locked, busy, connection lost, deadlock).

    Anything else a write raises (a constraint, a bad value) fails the same way every time it
    is tried.
    """
    if isinstance(exc, OperationalError | InterfaceError | SqlTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def begin_immediate(
    connection: Connection, timeout_s: float, *, poll_s: float = LOCK_POLL_S
) -> None:
    """``BEGIN IMMEDIATE`` on a SQLite connection: take the write lock, trying every ``poll_s``
    for at most ``timeout_s``.

    SQLite's own busy wait sleeps ever longer between tries (1 ms, 2, 5, 10, ... up to 100 ms),
    so a writer of another process (the scheduler applying the inbox beside the API's workers)
    that commits and begins again within a millisecond or so keeps the lock for as long as it
    has work, and a webhook waits for all of it. Trying every millisecond takes the lock in the
    first pause the other writer leaves (:func:`backend.loop.inbox.apply_pending` leaves one
    between its transactions).

    Raises:
        sqlalchemy.exc.OperationalError: still locked after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    connection.exec_driver_sql("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc.orig) and "busy" not in str(exc.orig):
                    raise
                if time.monotonic() + poll_s > deadline:
                    raise
            time.sleep(poll_s)
    finally:
        connection.exec_driver_sql(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full sync and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


class Store:
    """The state database: one engine and its session factory, passed down from the app."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite's busy handler retries a locked database with sleeps growing to 100 ms, so
        # threads of one process queueing for the write lock wait far longer than the writes
        # take; this lock hands the turn over at once (other processes still use the busy wait).
        self._writer = threading.Lock()
        #: How long a write transaction waits for SQLite's write lock before it fails.
        self.busy_timeout_s = BUSY_TIMEOUT_S

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (idempotent), one process at a time.

        Processes of one deployment often start together (the API's workers, the scheduler);
        without the lock two of them would both find a fresh database empty and both create its
        tables, and one would fail.
        """
        with self._migration_lock():
            command.upgrade(alembic_config(self.engine), "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """SQLite: an exclusive ``flock`` on a file beside the database; PostgreSQL: a session
        advisory lock; nothing for an in-memory database (one process by definition)."""
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                yield
                return
            with open(f"{url.database}.migrate.lock", "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        if url.get_backend_name() != "postgresql":
            yield
            return
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                connection.commit()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session whose transaction holds the write lock from its start (SQLite).

        SQLite in WAL mode refuses at once ("database is locked", no busy wait) a transaction
        that read first and then tries to write after another connection committed; taking the
        lock up front (``BEGIN IMMEDIATE``) makes it wait its turn instead. Keep these short:
        every other writer waits while one is open.
        """
        if self.engine.dialect.name != "sqlite":
            with self.session() as session:
                yield session
            return
        with self._writer, self.session() as session:
            begin_immediate(session.connection(), self.busy_timeout_s)
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A Core connection in one transaction holding the write lock from its start (SQLite),
        committed on success and rolled back on any error: :meth:`write_session` without the
        ORM session's work, for the statements of a request's hot path."""
        with ExitStack() as stack:
            if self.engine.dialect.name == "sqlite":
                stack.enter_context(self._writer)
            connection = stack.enter_context(self.engine.connect())
            if self.engine.dialect.name == "sqlite":
                begin_immediate(connection, self.busy_timeout_s)
            try:
                yield connection
                connection.commit()
            except BaseException:
                connection.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
