"""Wake-ups for long-polling claims when a job is created (DESIGN 15).

A claim that finds no pending job waits for a wake-up, never longer than the timeout its
caller gives, and then tries again: the timeout is the polling fallback that bounds the
wait should a wake-up be lost (a listener reconnecting, a notification dropped).

    wakeups = job_wakeups(database)       # in the API's lifespan
    await wakeups.start()
    ...
    def create_job(session, pipeline_id):  # the create-job unit of work
        job = JobRepository(session).create(pipeline_id)
        notify_job_created(session.connection())
        return job
    job = await database.write(create_job, pipeline_id)
    wakeups.job_created()                  # wakes this process's claims at once
    ...
    woken = await wakeups.wait(timeout_s)  # in the claim's long poll
    ...
    await wakeups.stop()

On SQLite, one process serves every claim, so the wake-up is in-process: `job_created()`
after the write. On PostgreSQL a job created through any node must wake the claims of
every node: `notify_job_created` sends `NOTIFY danube_jobs` inside the create-job
transaction (PostgreSQL delivers it at commit, and drops it on rollback), and each API
LISTENs on one connection of its own, outside its pool, reconnecting when it breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final, Protocol, cast

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from danube_shared.db.engine import Database
from danube_shared.db.error_translation import DATABASE_FAILURES, translate_error
from danube_shared.logs import get_logger

CHANNEL: Final = "danube_jobs"
LISTENER_APPLICATION_NAME: Final = "danube-job-listener"
# How long the listener waits before connecting again after a failure, and for a connect.
_RECONNECT_DELAY_S: Final = 1.0
_CONNECT_TIMEOUT_S: Final = 10.0

_NOTIFY: Final = select(func.pg_notify(CHANNEL, ""))

_log = get_logger(__name__)


def notify_job_created(connection: Connection) -> None:
    """Call inside the unit of work that creates a job: on PostgreSQL, every node's
    listener is told when the transaction commits. Nothing on SQLite (the caller wakes its
    own process with `JobWakeups.job_created()`)."""
    if connection.dialect.name == "postgresql":
        connection.execute(_NOTIFY)


class JobWakeups:
    """This process's claims waiting for a new job, and what wakes them: `job_created()`
    in-process, and on PostgreSQL the listener. Build it with `job_wakeups(database)`."""

    def __init__(self, listener: _Listener | None = None) -> None:
        self._event = asyncio.Event()
        self._listener = listener

    async def start(self) -> None:
        """Start listening (PostgreSQL); returns once the first LISTEN is in place, or
        has failed and is being retried in the background."""
        if self._listener is not None:
            await self._listener.start(self.job_created)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    def job_created(self) -> None:
        """Wake every claim waiting now."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def current(self) -> asyncio.Event:
        """The event the next wake-up sets: a claim takes it before it looks for a job and
        waits on it after (`wait(timeout_s, since=...)`), so a job created between the
        look and the wait still wakes it."""
        return self._event

    async def wait(self, timeout_s: float, *, since: asyncio.Event | None = None) -> bool:
        """Wait for a wake-up (the one after `since` was taken with `current()`, else the
        next), at most `timeout_s`; whether one came."""
        event = self._event if since is None else since
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        return True


def job_wakeups(database: Database) -> JobWakeups:
    """The wake-ups for the claims served on `database`: with a listener on PostgreSQL."""
    if not database.is_postgresql:
        return JobWakeups()
    # A connection of its own: it stays checked out for as long as the API runs.
    engine = create_async_engine(
        database.engine.url,
        poolclass=NullPool,
        hide_parameters=True,
        # Named, so that operators (and tests) can tell it in pg_stat_activity.
        connect_args={
            "timeout": _CONNECT_TIMEOUT_S,
            "server_settings": {"application_name": LISTENER_APPLICATION_NAME},
        },
    )
    return JobWakeups(_Listener(engine, database.path))


class _DriverConnection(Protocol):
    """What the listener uses of asyncpg's connection (asyncpg ships no type stubs)."""

    async def add_listener(self, channel: str, callback: Any) -> None: ...
    def add_termination_listener(self, callback: Any) -> None: ...


class _Listener:
    """LISTEN on `CHANNEL` on one connection, again after the connection breaks; each
    notification (and each new LISTEN, since notifications may have been missed while
    disconnected) calls `wake`."""

    def __init__(self, engine: AsyncEngine, label: str) -> None:
        self._engine = engine
        self._label = label
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()

    async def start(self, wake: Any) -> None:
        self._task = asyncio.create_task(self._listen(wake), name="danube-job-listener")
        await self._first_attempt.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._engine.dispose()

    async def _listen(self, wake: Any) -> None:
        while True:
            try:
                await self._listen_once(wake)
                _log.warning("job listener connection closed; reconnecting")
            except DATABASE_FAILURES as error:
                self._first_attempt.set()
                _log.warning(
                    "job listener cannot listen; claims fall back to polling",
                    error=translate_error(error, self._label).message,
                )
            await asyncio.sleep(_RECONNECT_DELAY_S)

    async def _listen_once(self, wake: Any) -> None:
        """LISTEN on one connection until it closes."""
        closed = asyncio.Event()

        def on_notification(*_arguments: object) -> None:
            wake()

        def on_termination(*_arguments: object) -> None:
            closed.set()

        async with self._engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = cast(_DriverConnection, raw.driver_connection)
            driver.add_termination_listener(on_termination)
            await driver.add_listener(CHANNEL, on_notification)
            _log.info("listening for new jobs", database=self._label, channel=CHANNEL)
            self._first_attempt.set()
            wake()  # a job created while this process was not listening
            await closed.wait()


__all__ = [
    "CHANNEL",
    "LISTENER_APPLICATION_NAME",
    "JobWakeups",
    "job_wakeups",
    "notify_job_created",
]
