"""The one writer thread of a SQLite file, and the bound on how long a write waits for it.

`SqliteWriter.run(bound, unit, *args)` queues a unit of work for the thread and awaits its
result: one hop from the event loop and one back. The thread owns the process's write
connection (a synchronous engine of one connection, built in the thread at its first
unit) and runs the units one at a time, in arrival order, each in its own session and
transaction: the caller's engine hooks begin it IMMEDIATE; it is committed when the unit
returns and rolled back if it raises. After a database failure the connection is closed,
so the next unit starts on a fresh one. A unit still waiting in the queue when its
`WriteWaitBound` runs out is never run, and its caller gets a `DatabaseError`. A caller
cancelled while its unit waits in the queue cancels the unit; one cancelled after its unit
started gets the unit's outcome first (the unit runs to its end either way), so that it
never acts on a write it believes undone, and the cancellation lands at its next await.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from danube_shared.db.error_translation import translate_error
from danube_shared.db.wal_checkpointer import Checkpointer
from danube_shared.errors import DatabaseError

T = TypeVar("T")
_DATABASE_FAILURES = (sa_exc.DBAPIError, sa_exc.TimeoutError)


class WriteWaitBound:
    """How long a write may wait for the writers of this process ahead of it."""

    def __init__(self, path: str, wait_ms: int) -> None:
        self.path = path
        self.wait_ms = wait_ms

    @property
    def seconds(self) -> float:
        return self.wait_ms / 1000

    def error(self) -> DatabaseError:
        return DatabaseError(
            f"database {self.path}: waited longer than {self.wait_ms} ms for the writers "
            "ahead of this one; the database is overloaded or a write is stuck; retry later"
        )

    @contextlib.asynccontextmanager
    async def limit(self, lock: asyncio.Lock) -> AsyncGenerator[None]:
        """Hold `lock`, waiting for it no longer than the bound."""
        try:
            async with asyncio.timeout(self.seconds):
                await lock.acquire()
        except TimeoutError:
            raise self.error() from None
        try:
            yield
        finally:
            lock.release()


class _Task(Generic[T]):
    """One queued unit and the future its caller awaits. `started` and `abandoned` are
    settled under `lock`: either the thread starts the unit, or its caller gives up on it,
    never both. The thread leaves the outcome in `outcome` before it wakes the loop, and
    `_settle` (on the loop) hands it to whatever `future` is then."""

    __slots__ = (
        "abandoned",
        "args",
        "future",
        "kwargs",
        "lock",
        "loop",
        "on_connection",
        "outcome",
        "settled",
        "started",
        "unit",
    )

    def __init__(
        self,
        unit: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        *,
        on_connection: bool = False,
    ) -> None:
        self.unit = unit
        self.on_connection = on_connection
        self.args = args
        self.kwargs = kwargs
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        self.lock = threading.Lock()
        self.started = False
        self.abandoned = False
        self.outcome: tuple[T | None, BaseException | None] | None = None
        self.settled = False

    def start(self) -> bool:
        """In the thread: whether to run the unit (its caller still waits for it)."""
        with self.lock:
            self.started = not self.abandoned
            return self.started

    def abandon(self) -> bool:
        """In the loop: give up on the unit unless it started; whether it was given up."""
        with self.lock:
            if not self.started:
                self.abandoned = True
            return self.abandoned

    def report(self, result: T | None, error: BaseException | None) -> None:
        """In the thread: hand the outcome to the caller's loop."""
        self.outcome = (result, error)
        with contextlib.suppress(RuntimeError):  # the caller's loop has closed
            self.loop.call_soon_threadsafe(_settle, self)


def _settle(task: _Task[Any]) -> None:
    task.settled = True
    future = task.future
    if future.done() or task.outcome is None:  # the caller was cancelled, or timed out
        return
    result, error = task.outcome
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SqliteWriter:
    """The writer thread of one database file; started by the first unit, stopped by
    `close`."""

    def __init__(
        self,
        make_engine: Callable[[], Engine],
        path: str,
        *,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._make_engine = make_engine
        # Checkpoints the WAL off this thread, when `make_engine`'s connection has SQLite's
        # auto-checkpoint turned off (see `wal_checkpointer`).
        self._checkpointer = checkpointer
        self._path = path
        self._engine: Engine | None = None
        self._connection: Connection | None = None
        self._session: Session | None = None
        self._queue: queue.SimpleQueue[_Task[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    async def run(
        self, bound: WriteWaitBound, unit: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """`unit(session, *args, **kwargs)` on the writer thread, in one transaction."""
        return await self._queued(bound, _Task(unit, args, kwargs, asyncio.get_running_loop()))

    async def run_on_connection(
        self, bound: WriteWaitBound, unit: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """`unit(connection, *args, **kwargs)` on the writer thread, in one transaction,
        with no `Session`: for units of Core statements only, whose session would only be
        joined to the transaction, flushed with nothing to flush and closed (40 to 60 us
        of a 300 us job creation, measured warm)."""
        task = _Task(unit, args, kwargs, asyncio.get_running_loop(), on_connection=True)
        return await self._queued(bound, task)

    async def _queued(self, bound: WriteWaitBound, task: _Task[T]) -> T:
        self._ensure_thread()
        timer = task.loop.call_later(bound.seconds, _expire, task, bound)
        self._queue.put(task)
        try:
            # Awaited bare, not shielded (a shield cost a future and a turn of the loop
            # per write): a cancellation cancels this future, and the outcome of a unit
            # that started is then taken from the task itself.
            return await task.future
        except asyncio.CancelledError:
            if task.abandon():
                raise  # never started: nothing was written
            return await _outcome_after_cancel(task)
        finally:
            timer.cancel()
            task.abandon()

    def close(self) -> None:
        """Run the units already queued, then stop the thread and close its connection."""
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        if self._checkpointer is not None:
            self._checkpointer.close()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="danube-db-writer", daemon=True
                    )
                    self._thread.start()

    def _serve(self) -> None:
        while (task := self._queue.get()) is not None:
            if not task.start():
                continue
            try:
                result = self._run(task)
            except BaseException as error:  # noqa: BLE001 -- handed to the caller, who raises it
                task.report(None, error)
            else:
                task.report(result, None)
        self._close_connection()

    def _run(self, task: _Task[T]) -> T:
        try:
            if self._connection is None or self._session is None:
                self._engine = self._make_engine()
                self._connection = self._engine.connect()
                self._session = Session(bind=self._connection, expire_on_commit=False)
            connection, session = self._connection, self._session
            # The thread keeps its one connection checked out, and its one session joins
            # the transaction each unit begins on it; `close()` after each unit empties
            # the session for the next. A session made per unit that checked the
            # connection out and back in (pool events, reset on return) cost about half
            # of an empty unit's time; a new Session object per unit, another 20 us.
            # BEGIN IMMEDIATE now, so the unit holds the write lock before its first
            # statement, whatever that statement is; committed when the block ends,
            # rolled back if the unit raises.
            if task.on_connection:
                with connection.begin():
                    result = task.unit(connection, *task.args, **task.kwargs)
            else:
                try:
                    with connection.begin():
                        result = task.unit(session, *task.args, **task.kwargs)
                        session.flush()
                finally:
                    session.close()
        except _DATABASE_FAILURES as error:
            self._close_connection()
            raise translate_error(error, self._path) from error
        if self._checkpointer is not None:
            self._checkpointer.note_commit()
        return result

    def _close_connection(self) -> None:
        self._session = None
        connection, self._connection = self._connection, None
        engine, self._engine = self._engine, None
        try:
            if connection is not None:
                connection.close()
        finally:
            if engine is not None:
                engine.dispose()


async def outcome_then_cancel(future: asyncio.Future[T]) -> T:
    """The outcome of a unit that started before its caller was cancelled: it runs to its
    end (on the thread, or in its own task on PostgreSQL) whatever the caller does, so the caller gets what was written, and
    the cancellation lands at its next await."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(future)
    current = asyncio.current_task()
    if current is not None:
        current.cancel()
    return future.result()


async def _outcome_after_cancel(task: _Task[T]) -> T:
    """The outcome of a unit that started before its caller was cancelled (which
    cancelled `task.future`), then the cancellation again, as `outcome_then_cancel`."""
    if task.settled:
        # `_settle` already ran, against the cancelled future: the outcome is here.
        assert task.outcome is not None  # noqa: S101 -- `report` sets it before `_settle` runs
        result, error = task.outcome
        current = asyncio.current_task()
        if current is not None:
            current.cancel()
        if error is not None:
            raise error
        return cast(T, result)
    task.future = task.loop.create_future()
    return await outcome_then_cancel(task.future)


def _expire(task: _Task[Any], bound: WriteWaitBound) -> None:
    if task.abandon() and not task.future.done():
        task.future.set_exception(bound.error())
