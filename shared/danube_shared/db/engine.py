"""The database of one Danube process: units of work over SQLAlchemy, on SQLite or
PostgreSQL.

    db = Database.open(settings.database)
    job = await db.write(create_job, pipeline_id)   # one write transaction, one hop
    job = await db.read(get_job, job_id)            # one consistent snapshot
    await db.dispose()

A unit of work is a plain function whose first argument is a SQLAlchemy `Session` (sync):
it does the whole transaction, and its caller hands it over in one piece (DESIGN 6). A
unit of Core statements only may take the transaction's `Connection` instead
(`write_on_connection`): the writer thread then runs it with no session around it. Work
that needs no lock (ids, timestamps, rows) is best done by the caller before the write:
the writer thread is woken for each unit, and Python runs there with cold caches, at
about half the speed it runs on the event loop (docs/performance.md, round six).

**Writes.** On a SQLite file, `write` puts the unit on the queue of one writer thread
that owns the process's one write connection (datasette's model). The thread runs each
unit in its own session, in a transaction begun `IMMEDIATE`, commits it, or rolls it back
if the unit raises; after a database failure the connection is closed and the next unit
gets a fresh one. The event loop pays one hop per write: a queue put, and one wake-up
when the result comes back. `IMMEDIATE` means a writer of another process (the migrator,
a second API) is waited for at BEGIN by the busy timeout, never half-way through.
On an in-memory database the unit runs through `AsyncSession.run_sync` on the async
engine instead, one unit at a time.

**PostgreSQL** (`database.url` set, DESIGN 15): the async engine runs on asyncpg with a
pool of `database.pool_size` connections (no overflow, so a node holds at most that many
per process) and waits at most `database.pool_timeout_s` for a free one or for a new
connection to open. A write unit runs through `AsyncSession.run_sync` in a READ COMMITTED
transaction, concurrently with the others (the server's row locks order them, as
`job_numbers` explains); a row lock held elsewhere is waited for at most
`database.busy_timeout_ms` (the server's `lock_timeout`). A read runs in a REPEATABLE
READ, READ ONLY transaction: one snapshot, as on SQLite. A write whose caller is cancelled
after it started still runs to its end and reports its outcome first, as on SQLite. A
failed transaction is rolled back and its connection goes back to the pool reset (or, if
the failure broke it, is discarded): nothing ever continues an aborted transaction.
Nothing SQLite-specific (PRAGMAs, BEGIN IMMEDIATE) reaches PostgreSQL: those live in the
SQLite connection hooks, which only SQLite engines get.

How long a write waits for the writers ahead of it in this process is bounded by
`write_wait_ms`; past it the write is not run and fails with a `DatabaseError`.

**Reads** run on the async engine (aiosqlite) with their own pooled connections, through
`AsyncSession.run_sync`, in a deferred transaction (one snapshot) that is rolled back at
the end; in WAL mode they never wait for the writer. A read unit that flushes changes is
refused.

The writer's commits never checkpoint the WAL: a `wal_checkpointer.Checkpointer` thread
does, after them, so that no write waits behind a checkpoint's copy and syncs.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

from danube_shared.config import DatabaseSettings
from danube_shared.db.driver_statements import execute_on_driver
from danube_shared.db.error_translation import DATABASE_FAILURES, translate_error
from danube_shared.db.sqlite_writer import SqliteWriter, WriteWaitBound, outcome_then_cancel
from danube_shared.db.wal_checkpointer import Checkpointer, turn_off_auto_checkpoint
from danube_shared.errors import DatabaseError

MEMORY = ":memory:"
# The execution option the BEGIN hook reads; the migrator sets it on its connection.
BEGIN_MODE_OPTION: Final = "danube_sqlite_begin"
BEGIN_IMMEDIATE: Final[dict[str, Any]] = {BEGIN_MODE_OPTION: "immediate"}
_BEGIN_STATEMENTS: Final = {"deferred": "BEGIN DEFERRED", "immediate": "BEGIN IMMEDIATE"}
# One snapshot per read (DESIGN 6); writes keep PostgreSQL's READ COMMITTED, under which a
# row lock waited for is re-read rather than failing the transaction.
_POSTGRESQL_READ: Final[dict[str, Any]] = {
    "isolation_level": "REPEATABLE READ",
    "postgresql_readonly": True,
}

P = ParamSpec("P")
T = TypeVar("T")
Unit = Callable[Concatenate[Session, P], T]
ConnectionUnit = Callable[Concatenate[Connection, P], T]


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
        self._postgresql = engine.dialect.name == "postgresql"
        # In-memory SQLite has one connection: its units run one at a time.
        self._turn: asyncio.Lock | None = None if self._postgresql else asyncio.Lock()
        self._writes = _Transaction({} if self._postgresql else BEGIN_IMMEDIATE, commit=True)
        self._reads = _Transaction(_POSTGRESQL_READ if self._postgresql else None, commit=False)
        self._read_sessions = async_sessionmaker(
            engine, expire_on_commit=False, sync_session_class=_ReadOnlySession
        )
        self._write_sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(
        cls, settings: DatabaseSettings, *, create: bool = False, write_wait_ms: int | None = None
    ) -> Database:
        """The database at `settings.url` (PostgreSQL) if set, else the SQLite file at
        `settings.path`. Nothing connects until the first unit of work.

        Without `create`, a missing file is an error (run `danube migrate` first) rather
        than a new empty database; the migrator passes `create=True` (PostgreSQL databases
        are created by their operator, so it means nothing there). `write_wait_ms` bounds
        how long `write()` waits for the writers of this process ahead of it, or on
        PostgreSQL for a pooled connection (default: `settings.busy_timeout_ms`, and on
        PostgreSQL `settings.pool_timeout_s`); a server that must answer in time passes its
        own bound.
        """
        busy_timeout_ms = settings.busy_timeout_ms
        wait_ms = busy_timeout_ms if write_wait_ms is None else write_wait_ms
        if settings.is_postgresql:
            pool_timeout_s = settings.pool_timeout_s
            if write_wait_ms is not None:
                pool_timeout_s = min(pool_timeout_s, max(write_wait_ms / 1000, 0.001))
            engine = _postgresql_engine(settings, pool_timeout_s=pool_timeout_s)
            return cls(engine, path=settings.url_for_display(), write_wait_ms=wait_ms, writer=None)
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
            checkpointer=Checkpointer(
                lambda: _checkpoint_engine(path, busy_timeout_ms=busy_timeout_ms)
            ),
        )
        return cls(engine, path=str(path), write_wait_ms=wait_ms, writer=writer)

    @property
    def engine(self) -> AsyncEngine:
        """The async engine reads run on (the migrator and the schema check use it too)."""
        return self._engine

    @property
    def path(self) -> str:
        """The database as messages and logs name it: the file's absolute path (or
        `:memory:`), or on PostgreSQL the URL with its password hidden."""
        return self._path

    @property
    def is_postgresql(self) -> bool:
        return self._postgresql

    async def write(self, unit: Unit[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`unit(session, *args, **kwargs)` in one write transaction (begun IMMEDIATE on
        SQLite), committed when it returns, rolled back if it raises. Database failures
        surface as `DanubeError`s; waiting longer than `write_wait_ms` for the writers ahead
        (on PostgreSQL: for a pooled connection) is a `DatabaseError`, and the unit does not
        run. Cancelled while queued, the unit does not
        run; cancelled after it started, the caller still gets its outcome, and the
        cancellation lands at the caller's next await (see `sqlite_writer`)."""
        if self._writer is not None:
            return await self._writer.run(self._bound, unit, *args, **kwargs)
        if self._turn is None:
            # Shielded: a unit that started runs to its end and its caller learns the
            # outcome before the cancellation, as with the writer thread.
            running = asyncio.ensure_future(
                self._run_sync(self._write_sessions, self._writes, unit, *args, **kwargs)
            )
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                return await outcome_then_cancel(running)
        async with self._bound.limit(self._turn):
            return await self._run_sync(self._write_sessions, self._writes, unit, *args, **kwargs)

    async def write_on_connection(
        self, unit: ConnectionUnit[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`write` for a unit of Core statements only: `unit(connection, *args, **kwargs)`,
        given the transaction's `Connection` and no `Session` (on SQLite's writer thread, a
        session costs a unit 40 to 60 us). Everything `write` says holds."""
        if self._writer is not None:
            return await self._writer.run_on_connection(self._bound, unit, *args, **kwargs)
        return await self.write(_on_connection_of, unit, *args, **kwargs)

    async def read(self, unit: Unit[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`unit(session, *args, **kwargs)` on one consistent snapshot, rolled back at the
        end. A unit that flushes changes is a programming error (`RuntimeError`)."""
        if self._turn is None or self._writer is not None:
            return await self._run_sync(self._read_sessions, self._reads, unit, *args, **kwargs)
        # An in-memory database has one connection: reads take their turn with writes.
        async with self._bound.limit(self._turn):
            return await self._run_sync(self._read_sessions, self._reads, unit, *args, **kwargs)

    async def dispose(self) -> None:
        """Stop the writer thread and close every connection (the last close checkpoints
        the WAL)."""
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        await self._engine.dispose()

    async def _run_sync(
        self,
        sessions: async_sessionmaker[Any],
        transaction: _Transaction,
        unit: Unit[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        try:
            async with sessions() as session:
                if transaction.options is not None:
                    # Begins the transaction now, as the options say (IMMEDIATE on SQLite).
                    await session.connection(execution_options=transaction.options)
                result = await session.run_sync(unit, *args, **kwargs)
                if transaction.commit:
                    await session.commit()
                return result
        except DATABASE_FAILURES as error:
            raise translate_error(error, self._path) from error


def _on_connection_of(session: Session, unit: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return unit(session.connection(), *args, **kwargs)


@dataclass(frozen=True, slots=True)
class _Transaction:
    """How a unit's transaction begins (execution options, or `None`: when the unit first
    needs it) and whether it is committed (writes) or rolled back (reads)."""

    options: dict[str, Any] | None
    commit: bool


class _ReadOnlySession(Session):
    """The session of `Database.read()`: a flush with changes pending is refused."""

    def flush(self, objects: Any = None) -> None:
        if self.new or self.dirty or self.deleted:
            raise RuntimeError("a db.read() unit of work cannot write; use db.write()")
        super().flush(objects)


def _postgresql_engine(settings: DatabaseSettings, *, pool_timeout_s: float) -> AsyncEngine:
    """An asyncpg engine on `settings.url`: a fixed pool, bounded waits, no SQLite hooks.

    `hide_parameters` keeps stored values out of SQLAlchemy's exception text. The URL's
    password stays inside the engine: messages use `url_for_display()`, and SQLAlchemy
    renders URLs with the password hidden."""
    server_settings = {"application_name": "danube"}
    if settings.busy_timeout_ms > 0:
        server_settings["lock_timeout"] = str(settings.busy_timeout_ms)
    return create_async_engine(
        make_url(settings.url),
        hide_parameters=True,
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout_s,
        connect_args={"timeout": pool_timeout_s, "server_settings": server_settings},
    )


def _writer_engine(path: Path, *, create: bool, busy_timeout_ms: int) -> Engine:
    """The writer thread's synchronous engine: one connection, every transaction begun
    IMMEDIATE."""
    engine = _thread_engine(path, create=create)
    install_connection_hooks(
        engine, busy_timeout_ms=busy_timeout_ms, begin="immediate", begin_on_driver=True
    )
    # Its commits never checkpoint: the writer's `Checkpointer` does, on its own thread.
    event.listen(engine, "connect", turn_off_auto_checkpoint)
    return engine


def _checkpoint_engine(path: Path, *, busy_timeout_ms: int) -> Engine:
    """The checkpointer thread's engine: one connection to the existing file."""
    engine = _thread_engine(path, create=False)
    install_connection_hooks(engine, busy_timeout_ms=busy_timeout_ms)
    return engine


def _thread_engine(path: Path, *, create: bool) -> Engine:
    """A synchronous `sqlite3` engine of one connection, for the one thread that uses it."""
    engine: Engine = create_engine(
        _file_url("sqlite+pysqlite", path, create=create),
        hide_parameters=True,
        pool_size=1,
        max_overflow=0,
        # Only its one thread uses the connection; sqlite3's own thread check adds nothing.
        connect_args={"check_same_thread": False},
    )
    _refuse_to_connect_without_file(engine, path, create=create)
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
    engine: Engine, *, busy_timeout_ms: int, begin: str = "deferred", begin_on_driver: bool = False
) -> None:
    """The pragmas on every new connection, and SQLAlchemy (not `sqlite3`) emitting BEGIN:
    `begin` unless a connection's `BEGIN_MODE_OPTION` says otherwise. `begin_on_driver`
    (the writer thread's `sqlite3` engine) sends the BEGIN straight on the driver's
    connection (`driver_statements.execute_on_driver`): one per write, and SQLAlchemy's
    execution path cost more than the statement."""

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
        if begin_on_driver:
            execute_on_driver(connection, _BEGIN_STATEMENTS[mode])
        else:
            connection.exec_driver_sql(_BEGIN_STATEMENTS[mode])

    event.listen(engine, "connect", configure_connection)
    event.listen(engine, "begin", begin_transaction)


__all__ = ["BEGIN_IMMEDIATE", "BEGIN_MODE_OPTION", "MEMORY", "Database", "Unit"]
