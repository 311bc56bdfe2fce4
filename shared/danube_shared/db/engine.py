"""The database of one Danube process: units of work over SQLAlchemy on SQLite.

    db = Database.open(settings.database)
    job = await db.write(create_job, pipeline_id)   # one write transaction, one hop
    job = await db.read(get_job, job_id)            # one consistent snapshot
    await db.dispose()

A unit of work is a plain function whose first argument is a SQLAlchemy `Session` (sync):
it does the whole transaction, and its caller hands it over in one piece (DESIGN 6).

**Writes.** On a SQLite file, `write` puts the unit on the queue of one writer thread
that owns the process's one write connection (datasette's model). The thread runs each
unit in its own session, in a transaction begun `IMMEDIATE`, commits it, or rolls it back
if the unit raises; after a database failure the connection is closed and the next unit
gets a fresh one. The event loop pays one hop per write: a queue put, and one wake-up
when the result comes back. `IMMEDIATE` means a writer of another process (the migrator,
a second API) is waited for at BEGIN by the busy timeout, never half-way through.
On an in-memory database (or, later, PostgreSQL) the unit runs through
`AsyncSession.run_sync` on the async engine instead, one unit at a time.

How long a write waits for the writers ahead of it in this process is bounded by
`write_wait_ms`; past it the write is not run and fails with a `DatabaseError`.

**Reads** run on the async engine (aiosqlite) with their own pooled connections, through
`AsyncSession.run_sync`, in a deferred transaction (one snapshot) that is rolled back at
the end; in WAL mode they never wait for the writer. A read unit that flushes changes is
refused.

Every connection, the writer's included, gets `journal_mode=WAL`, `synchronous=NORMAL`,
`foreign_keys=ON` and `busy_timeout` from a connect hook: these are per-connection
settings. The same hook hands control of BEGIN from the `sqlite3` module to SQLAlchemy,
so that a read really is one snapshot and a write can begin IMMEDIATE.

Why one writer: measured with `uv run python -m benchmarks.write_strategies` (1000 job
creations split among N concurrent writers, 2-CPU machine; latencies per transaction).
BEGIN DEFERRED on pooled connections fails with `database is locked` whenever two
transactions try to upgrade from reading to writing. BEGIN IMMEDIATE on pooled
connections never does, but its writers wait in SQLite's busy handler, which sleeps and
polls, so unlucky ones wait hundreds of times the median. The writer thread queues them
in arrival order, so the slowest write waits only for those ahead of it: see the table
in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

from danube_shared.config import DatabaseSettings
from danube_shared.db.error_translation import translate_error
from danube_shared.db.sqlite_writer import SqliteWriter, WriteWaitBound
from danube_shared.errors import DatabaseError

MEMORY = ":memory:"
# The execution option the BEGIN hook reads; the migrator sets it on its connection.
BEGIN_MODE_OPTION: Final = "danube_sqlite_begin"
BEGIN_IMMEDIATE: Final[dict[str, Any]] = {BEGIN_MODE_OPTION: "immediate"}
_BEGIN_STATEMENTS: Final = {"deferred": "BEGIN DEFERRED", "immediate": "BEGIN IMMEDIATE"}
_DATABASE_FAILURES = (sa_exc.DBAPIError, sa_exc.TimeoutError)

P = ParamSpec("P")
T = TypeVar("T")
Unit = Callable[Concatenate[Session, P], T]


class Database:
    """The engines and units of work of one process. Build it with `Database.open`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        path: str,
        write_wait_ms: int,
        writer: SqliteWriter | None,
    ) -> None:
        self._engine = engine
        self._path = path
        self._bound = WriteWaitBound(path, write_wait_ms)
        self._writer = writer
        # Without a writer thread, units run one at a time on the async engine.
        self._turn = asyncio.Lock()
        self._read_sessions = async_sessionmaker(
            engine, expire_on_commit=False, sync_session_class=_ReadOnlySession
        )
        self._write_sessions = async_sessionmaker(engine, expire_on_commit=False)

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
        busy_timeout_ms = settings.busy_timeout_ms
        wait_ms = busy_timeout_ms if write_wait_ms is None else write_wait_ms
        if str(settings.path) == MEMORY:
            engine = create_async_engine(
                URL.create("sqlite+aiosqlite", database=MEMORY), hide_parameters=True
            )
            install_connection_hooks(engine.sync_engine, busy_timeout_ms=busy_timeout_ms)
            return cls(engine, path=MEMORY, write_wait_ms=wait_ms, writer=None)
        path = settings.path.absolute()
        engine = create_async_engine(
            _file_url("sqlite+aiosqlite", path, create=create),
            hide_parameters=True,
            pool_timeout=max(busy_timeout_ms / 1000, 0.001),
        )
        _refuse_to_connect_without_file(engine.sync_engine, path, create=create)
        install_connection_hooks(engine.sync_engine, busy_timeout_ms=busy_timeout_ms)
        writer = SqliteWriter(
            lambda: _writer_engine(path, create=create, busy_timeout_ms=busy_timeout_ms),
            str(path),
        )
        return cls(engine, path=str(path), write_wait_ms=wait_ms, writer=writer)

    @property
    def engine(self) -> AsyncEngine:
        """The async engine reads run on (the migrator and the schema check use it too)."""
        return self._engine

    @property
    def path(self) -> str:
        """The database file's absolute path (or `:memory:`), as error messages name it."""
        return self._path

    async def write(self, unit: Unit[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`unit(session, *args, **kwargs)` in one write transaction begun IMMEDIATE,
        committed when it returns, rolled back if it raises. Database failures surface as
        `DanubeError`s; waiting longer than `write_wait_ms` for the writers ahead is a
        `DatabaseError`, and the unit does not run. Cancelled while queued, the unit does not
        run; cancelled after it started, the caller still gets its outcome, and the
        cancellation lands at the caller's next await (see `sqlite_writer`)."""
        if self._writer is not None:
            return await self._writer.run(self._bound, unit, *args, **kwargs)
        async with self._bound.limit(self._turn):
            return await self._run_sync(
                self._write_sessions, BEGIN_IMMEDIATE, unit, *args, **kwargs
            )

    async def read(self, unit: Unit[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`unit(session, *args, **kwargs)` on one consistent snapshot, rolled back at the
        end. A unit that flushes changes is a programming error (`RuntimeError`)."""
        if self._writer is not None:
            return await self._run_sync(self._read_sessions, None, unit, *args, **kwargs)
        # An in-memory database has one connection: reads take their turn with writes.
        async with self._bound.limit(self._turn):
            return await self._run_sync(self._read_sessions, None, unit, *args, **kwargs)

    async def dispose(self) -> None:
        """Stop the writer thread and close every connection (the last close checkpoints
        the WAL)."""
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        await self._engine.dispose()

    async def _run_sync(
        self,
        sessions: async_sessionmaker[Any],
        begin: dict[str, Any] | None,
        unit: Unit[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        write = begin is not None
        try:
            async with sessions() as session:
                if write:
                    await session.connection(execution_options=begin)
                result = await session.run_sync(unit, *args, **kwargs)
                if write:
                    await session.commit()
                return result
        except _DATABASE_FAILURES as error:
            raise translate_error(error, self._path) from error


class _ReadOnlySession(Session):
    """The session of `Database.read()`: a flush with changes pending is refused."""

    def flush(self, objects: Any = None) -> None:
        if self.new or self.dirty or self.deleted:
            raise RuntimeError("a db.read() unit of work cannot write; use db.write()")
        super().flush(objects)


def _writer_engine(path: Path, *, create: bool, busy_timeout_ms: int) -> Engine:
    """The writer thread's synchronous engine: one connection, every transaction begun
    IMMEDIATE."""
    engine: Engine = create_engine(
        _file_url("sqlite+pysqlite", path, create=create),
        hide_parameters=True,
        pool_size=1,
        max_overflow=0,
        # The writer thread is the only user; the connection stays in its thread.
        connect_args={"check_same_thread": False},
    )
    _refuse_to_connect_without_file(engine, path, create=create)
    install_connection_hooks(engine, busy_timeout_ms=busy_timeout_ms, begin="immediate")
    return engine


def _file_url(driver: str, path: Path, *, create: bool) -> URL:
    # A URI filename, so that `mode=rw` can refuse to create a missing database.
    return URL.create(
        driver,
        database="file:" + quote(str(path)),
        query={"mode": "rwc" if create else "rw", "uri": "true"},
    )


def _refuse_to_connect_without_file(engine: Engine, path: Path, *, create: bool) -> None:
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

    event.listen(engine, "do_connect", check)


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


def install_connection_hooks(
    engine: Engine, *, busy_timeout_ms: int, begin: str = "deferred"
) -> None:
    """The pragmas on every new connection, and SQLAlchemy (not `sqlite3`) emitting BEGIN:
    `begin` unless a connection's `BEGIN_MODE_OPTION` says otherwise."""

    def configure_connection(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
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

    def begin_transaction(connection: Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_MODE_OPTION, begin)
        connection.exec_driver_sql(_BEGIN_STATEMENTS[mode])

    event.listen(engine, "connect", configure_connection)
    event.listen(engine, "begin", begin_transaction)


__all__ = ["BEGIN_IMMEDIATE", "BEGIN_MODE_OPTION", "MEMORY", "Database", "Unit"]
