"""The database of one Danube process: an async SQLAlchemy engine on SQLite (aiosqlite)
and its units of work.

    db = Database.open(settings.database)
    async with db.write() as session:   # one write transaction, committed on exit
        ...
    async with db.read() as session:    # one consistent snapshot, never writes
        ...
    await db.dispose()

Every new connection gets `journal_mode=WAL`, `synchronous=NORMAL`, `foreign_keys=ON` and
`busy_timeout` from a connect hook: these are per-connection settings, so a statement run
once at start-up would miss every connection the pool opens later. The same hook hands
control of BEGIN from the `sqlite3` module to SQLAlchemy, so that a read transaction
really is one snapshot and a write transaction can begin IMMEDIATE.

Writes go through a single writer, and each write transaction begins IMMEDIATE.
Measured with `uv run python tests/db/measure_write_strategies.py`: 1000 job creations
(one SELECT, then INSERTs of a job and its three steps) split among N concurrent writers,
on the default pool (5 + 10 connections), on a 2-CPU machine; latencies are per
transaction:

    writers  strategy                    tx/s   p50 ms   p99 ms   max ms  lock errors
          8  BEGIN DEFERRED, pooled       172      7.0     11.9     51.4          885
          8  BEGIN IMMEDIATE, pooled     1130      0.8    104.6    530.2            0
          8  single writer + IMMEDIATE   1042      7.3     12.5     13.9            0
         32  BEGIN DEFERRED, pooled        76     29.2     96.6     96.6          925
         32  BEGIN IMMEDIATE, pooled      933     14.9    231.2   1041.1            0
         32  single writer + IMMEDIATE   1127     27.5     32.6     33.3            0
         50  BEGIN DEFERRED, pooled        77     41.6    147.2    147.2          932
         50  BEGIN IMMEDIATE, pooled      956     33.7    359.7   1032.9            0
         50  single writer + IMMEDIATE   1044     46.7     54.7     55.1            0

Deferred transactions fail with `database is locked` whenever two of them try to upgrade
from reading to writing. IMMEDIATE never does, and its throughput is the same as the
single writer's (SQLite commits one writer at a time whatever we do), but its waiting
happens in SQLite's busy handler, which sleeps and polls: unlucky writers wait hundreds
of times the median (0.5 s against 0.8 ms at 8 writers, 1 s at 50), and heavier load
would push them past busy_timeout into errors. The single writer queues writers in
arrival order on an `asyncio.Lock`, so the slowest write waits only for the ones ahead of
it (p99 within 1.2x of the median from 32 writers), which is what the API's
`api_write_tail` target asks for. Write transactions still begin IMMEDIATE, so that a
writer in another process (the migrator, a second API) is waited for at BEGIN, by the
busy timeout, instead of failing halfway.
Reads use their own pooled connections and, in WAL mode, never wait for the writer.

An in-memory database (`database.path = ":memory:"`, for fast unit tests) has one
connection, so its reads queue behind the writer too.

The engine uses its own adapter over aiosqlite (`danube_shared.db.aiosqlite_adapter`): a statement
is one round trip to aiosqlite's thread instead of SQLAlchemy's three or four, a BEGIN
DEFERRED travels with the first statement, and a COMMIT or ROLLBACK with no transaction
open is not sent. Creating a job went from 19 trips to 6.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

from danube_shared.config import DatabaseSettings
from danube_shared.db.aiosqlite_adapter import OneHopConnection, OneHopDBAPI
from danube_shared.db.error_translation import translate_error
from danube_shared.errors import DatabaseError

MEMORY = ":memory:"
# The execution option the BEGIN hook reads; `write()` sets it, and so does the migrator.
BEGIN_MODE_OPTION: Final = "danube_sqlite_begin"
BEGIN_IMMEDIATE: Final[dict[str, Any]] = {BEGIN_MODE_OPTION: "immediate"}
_BEGIN_STATEMENTS: Final = {"deferred": "BEGIN DEFERRED", "immediate": "BEGIN IMMEDIATE"}
_DATABASE_FAILURES = (sa_exc.DBAPIError, sa_exc.TimeoutError)


class Database:
    """The engine and units of work of one process. Build it with `Database.open`."""

    def __init__(self, engine: AsyncEngine, *, path: str, write_wait_ms: int) -> None:
        self._engine = engine
        self._path = path
        self._write_wait_ms = write_wait_ms
        self._in_memory = path == MEMORY
        self._writer = asyncio.Lock()
        self._write_sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            engine, expire_on_commit=False, sync_session_class=_ReadOnlySession
        )

    @classmethod
    def open(
        cls, settings: DatabaseSettings, *, create: bool = False, write_wait_ms: int | None = None
    ) -> Database:
        """The database at `settings.path`. Nothing connects until the first unit of work.

        Without `create`, a missing file is an error (run `danube migrate` first) rather
        than a new empty database; the migrator passes `create=True`. `write_wait_ms`
        bounds how long `write()` waits for the writers of this process ahead of it
        (default: `settings.busy_timeout_ms`); a server that must answer in time passes
        its own bound.
        """
        in_memory = str(settings.path) == MEMORY
        path = MEMORY if in_memory else str(settings.path.absolute())
        if in_memory:
            engine = create_async_engine(
                URL.create("sqlite+aiosqlite", database=MEMORY),
                hide_parameters=True,
                module=OneHopDBAPI(),
            )
        else:
            engine = create_async_engine(
                _file_url(Path(path), create=create),
                hide_parameters=True,
                pool_timeout=max(settings.busy_timeout_ms / 1000, 0.001),
                module=OneHopDBAPI(),
            )
            _refuse_to_connect_without_file(engine, Path(path), create=create)
        _install_connection_hooks(engine, busy_timeout_ms=settings.busy_timeout_ms)
        return cls(
            engine,
            path=path,
            write_wait_ms=settings.busy_timeout_ms if write_wait_ms is None else write_wait_ms,
        )

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def path(self) -> str:
        """The database file's absolute path (or `:memory:`), as error messages name it."""
        return self._path

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncGenerator[AsyncSession, None]:
        """A session in a write transaction that began IMMEDIATE, as the only writer of
        this process. Commits when the block ends normally, rolls back on any exception.
        Database failures surface as `DanubeError`s; waiting longer than `write_wait_ms`
        for the writers ahead is a `DatabaseError`. Not re-entrant: a `write()` opened
        inside another waits for it, and fails."""
        async with self._writer_turn(), self._write_sessions() as session:
            try:
                await session.connection(execution_options=BEGIN_IMMEDIATE)
                yield session
                await session.commit()
            except _DATABASE_FAILURES as error:
                raise translate_error(error, self._path) from error

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncGenerator[AsyncSession, None]:
        """A session on one consistent snapshot, rolled back at the end. Adding, changing
        or deleting objects in it is a programming error."""
        turn = self._writer_turn() if self._in_memory else contextlib.nullcontext()
        async with turn, self._read_sessions() as session:
            try:
                yield session
            except _DATABASE_FAILURES as error:
                raise translate_error(error, self._path) from error

    async def dispose(self) -> None:
        """Close every pooled connection (the last close checkpoints the WAL)."""
        await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def _writer_turn(self) -> AsyncGenerator[None, None]:
        try:
            async with asyncio.timeout(self._write_wait_ms / 1000):
                await self._writer.acquire()
        except TimeoutError:
            raise DatabaseError(
                f"database {self._path}: waited longer than {self._write_wait_ms} ms for "
                "the writers ahead of this one; the database is overloaded or a write is "
                "stuck; retry later"
            ) from None
        try:
            yield
        finally:
            self._writer.release()


class _ReadOnlySession(Session):
    """The session of `Database.read()`: a flush with changes pending is refused."""

    def flush(self, objects: Sequence[Any] | None = None) -> None:
        if self.new or self.dirty or self.deleted:
            raise RuntimeError("a db.read() unit of work cannot write; use db.write()")
        super().flush(objects)


def _file_url(path: Path, *, create: bool) -> URL:
    # A URI filename, so that `mode=rw` can refuse to create a missing database.
    return URL.create(
        "sqlite+aiosqlite",
        database="file:" + quote(str(path)),
        query={"mode": "rwc" if create else "rw", "uri": "true"},
    )


def _refuse_to_connect_without_file(engine: AsyncEngine, path: Path, *, create: bool) -> None:
    """Check the file (or, to create it, its directory) before each new connection.

    SQLite would refuse these cases too, but when aiosqlite fails to connect it stops its
    worker thread without waiting for it, and the thread may then report to an event loop
    that has closed (omnilib/aiosqlite#241). The checks also give clearer messages; the
    URI's `mode` and SQLite's own checks stay as the backstop.
    """

    def check(*_connect_arguments: Any) -> None:
        problem = _file_problem(path, create=create)
        if problem is not None:
            raise DatabaseError(problem)

    event.listen(engine.sync_engine, "do_connect", check)


def _file_problem(path: Path, *, create: bool) -> str | None:
    if path.exists():
        return _existing_file_problem(path)
    if not create:
        return (
            f"database {path} does not exist; run `danube migrate` to create it, or check "
            "database.path"
        )
    return _new_file_problem(path)


def _existing_file_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"database.path {path} is not a regular file; point it at a file"
    if not os.access(path, os.R_OK | os.W_OK):
        return (
            f"database {path} is not readable and writable by this account; fix its owner "
            "or permissions (and those of its -wal and -shm files)"
        )
    return None


def _new_file_problem(path: Path) -> str | None:
    if not path.parent.is_dir():
        return (
            f"cannot create database {path}: its directory does not exist; create it or "
            "run `danube migrate`, which does"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return (
            f"cannot create database {path}: its directory is not writable by this "
            "account; fix the directory's owner or permissions"
        )
    return None


def _install_connection_hooks(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    def configure_connection(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # SQLAlchemy, not the sqlite3 module, emits BEGIN (see `begin` below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # First, so that switching the journal mode waits for other connections too.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_MODE_OPTION, "deferred")
        adapted = cast(OneHopConnection, connection.connection.dbapi_connection)
        # A deferred BEGIN takes no lock and no snapshot until the first statement, so it
        # travels with that statement; IMMEDIATE takes the write lock now, as promised.
        statement = _BEGIN_STATEMENTS[mode]
        try:
            adapted.begin(statement, defer=mode == "deferred")
        except sqlite3.Error as error:
            # Wrapped as SQLAlchemy wraps a statement's failure, for the units of work.
            raise sa_exc.DBAPIError.instance(statement, None, error, sqlite3.Error) from error

    event.listen(engine.sync_engine, "connect", configure_connection)
    event.listen(engine.sync_engine, "begin", begin)
