"""A DBAPI adapter over aiosqlite that takes one trip to the driver's thread per statement.

SQLAlchemy's aiosqlite adapter sends each DBAPI call to aiosqlite's worker thread
separately: a statement costs 3 or 4 round trips between the event loop and that thread
(cursor, execute, fetchall, close), each tens of microseconds of wake-ups and context
switches, and a unit of work of five statements took 19. This adapter runs a whole
statement (and a deferred BEGIN before it) in one trip, and sends no COMMIT or ROLLBACK
when the connection has no transaction open (as after a unit of work that ended its own:
the pool's reset-on-return then costs nothing), which SQLite would ignore anyway. It
rides on the same aiosqlite connection and thread, through `aiosqlite.Connection._execute`,
the queue SQLAlchemy's own adapter reaches into too; `tests/db/test_driver_trips.py`
pins that behaviour, so an aiosqlite upgrade that changes it fails there first.

`Database.open` passes `OneHopDBAPI()` as the engine's DBAPI module.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int | None]
_T = TypeVar("_T")


def _in_worker(
    driver: aiosqlite.Connection,
    function: Callable[..., _T],
    *args: Any,
    **kwargs: Any,
) -> Awaitable[_T]:
    """`function(sqlite3_connection, *args, **kwargs)` in the driver's thread: one trip."""
    return driver._execute(function, driver._conn, *args, **kwargs)  # pyright: ignore[reportPrivateUsage, reportUnknownMemberType, reportUnknownVariableType] # noqa: SLF001 -- see the module docstring


def _transaction_open(driver: aiosqlite.Connection) -> bool:
    # SQLite's autocommit flag, read without a trip; a closed connection has none open.
    try:
        return driver.in_transaction
    except ValueError:
        return False


def _run_statement(
    connection: sqlite3.Connection,
    begin: str | None,
    operation: str,
    parameters: Any,
    *,
    many: bool,
) -> _Outcome:
    """In the worker thread: the statement's description, rows, rowcount and lastrowid."""
    if begin is not None:
        connection.execute(begin).close()
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description is not None else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statements each take one trip to the worker thread; the rows come
    back with it, so fetching and closing take none."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: OneHopConnection) -> None:  # pyright: ignore[reportMissingSuperCall] -- the base opens a driver cursor: the trip this class saves
        self._adapt_connection = adapt_connection
        self._connection = cast(Any, adapt_connection.driver)
        self._soft_closed_memoized = {}
        self._rows = deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._run(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self._run(operation, seq_of_parameters, many=True)

    def _run(self, operation: str, parameters: Any, *, many: bool) -> None:
        adapted = cast(OneHopConnection, self._adapt_connection)
        self._description, rows, self._rowcount, self._lastrowid = adapted.run(
            operation, parameters, many=many
        )
        self._rows = deque(rows)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """Statements, an IMMEDIATE BEGIN, COMMIT and ROLLBACK in one trip each; none for a
    DEFERRED BEGIN (it goes with the next statement) or for ending no transaction."""

    __slots__ = ("_pending_begin",)
    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: aiosqlite.Connection) -> None:
        super().__init__(dbapi, cast(Any, connection))
        self._pending_begin: str | None = None

    @property
    def driver(self) -> aiosqlite.Connection:
        return cast(aiosqlite.Connection, self.driver_connection)

    def begin(self, statement: str, *, defer: bool) -> None:
        self._pending_begin = None
        if defer:
            self._pending_begin = statement
        else:
            self.run(statement, None, many=False)

    def run(self, operation: str, parameters: Any, *, many: bool) -> _Outcome:
        begin, self._pending_begin = self._pending_begin, None
        try:
            return await_(
                _in_worker(self.driver, _run_statement, begin, operation, parameters, many=many)
            )
        except Exception as error:  # noqa: BLE001 -- as SQLAlchemy's adapter: re-raised, wrapped
            self._handle_exception(error)

    def commit(self) -> None:
        self._pending_begin = None
        if _transaction_open(self.driver):
            super().commit()

    def rollback(self) -> None:
        self._pending_begin = None
        if _transaction_open(self.driver):
            super().rollback()


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI module, handing out `OneHopConnection`s."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, cast(aiosqlite.Connection, adapted.driver_connection))
