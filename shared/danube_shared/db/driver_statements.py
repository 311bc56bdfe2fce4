"""Prebuilt Core statements run straight on the SQLite driver's cursor, for the writer
thread's hottest units (a log append, a job creation).

SQLAlchemy's execution path (compiled-cache lookup, execution context, bind processing,
result set-up, events) costs 50 to 100 us of Python per statement on this machine; the
`sqlite3` call itself 10 to 60 us. A `DriverStatement` is compiled once per dialect from
the same Core statement the portable path runs, so the SQL is SQLAlchemy's own rendering
and no SQL is written by hand; each run orders the values as the compiled statement
binds them, applies the column types' bind processing (UTC timestamps), and executes on
the DBAPI connection the SQLAlchemy `Connection` holds, inside the transaction that
connection began. A driver error is raised wrapped as SQLAlchemy wraps it (`DBAPIError`,
parameters hidden), so callers translate it exactly as any other failure.

Only the writer thread's `sqlite3` connections take this path (`applies_to`): reads
(aiosqlite), an in-memory database's writes and PostgreSQL run in an async driver's
adapter, where the same statement runs through SQLAlchemy. A `DriverStatement` chooses
for itself, so its callers write one call whichever connection they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.expression import Select, UpdateBase
from sqlalchemy.types import TypeEngine

# The writer thread's driver; the read engine's aiosqlite (and an in-memory database's
# writes, run through it) keep the Core path.
_SQLITE: Final = "sqlite"
_PYSQLITE: Final = "pysqlite"
# A bind whose value each run gives (the statement holds none of its own).
_GIVEN: Final = object()


# What runs on both paths: an INSERT, UPDATE or DELETE, or a SELECT.
Statement = UpdateBase | Select[Any]


class _DriverCursor(Protocol):
    def fetchall(self) -> list[Any]: ...


def applies_to(connection: Connection) -> bool:
    """Whether `connection` may run `DriverStatement`s (a `sqlite3` connection)."""
    dialect = connection.dialect
    return dialect.name == _SQLITE and dialect.driver == _PYSQLITE


class _Compiled:
    """One statement compiled for one dialect: its SQL, and for each bind in order its
    name, the value the statement itself holds, if any, and its type's processing."""

    __slots__ = ("plan", "results", "sql")

    def __init__(
        self,
        statement: Statement,
        dialect: Dialect,
        column_keys: Sequence[str] | None,
        result_types: Sequence[TypeEngine[Any] | None],
    ) -> None:
        compiled = statement.compile(
            dialect=dialect, column_keys=None if column_keys is None else list(column_keys)
        )
        if compiled.positiontup is None:
            raise TypeError(f"{dialect.name} does not bind parameters by position")
        self.sql: str = compiled.string
        order: tuple[str, ...] = tuple(compiled.positiontup)
        fixed: dict[str, Any] = {}
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():
            if not bind.required:
                # A value the statement holds itself, e.g. `status = 'running'`. A column's
                # Python-side default would be None here (the execution context fills it
                # in, which this path skips): such a column must be given.
                if bind.effective_value is None:
                    raise TypeError(f"give {name!r} in every run: it has a Python-side default")
                fixed[name] = bind.effective_value
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        # What `values` walks, in bind order: the name, the statement's own value (or
        # `_GIVEN`: a run must give it), the bind processing.
        self.plan: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...] = tuple(
            (name, fixed.get(name, _GIVEN), processors.get(name)) for name in order
        )
        results: list[Callable[[Any], Any] | None] = []
        for result_type in result_types:
            processor = None
            if result_type is not None:
                processor = result_type.dialect_impl(dialect).result_processor(dialect, None)
            results.append(processor)
        self.results: tuple[Callable[[Any], Any] | None, ...] | None = (
            tuple(results) if any(processor is not None for processor in results) else None
        )

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        processors = self.results
        if processors is None:
            return raw
        return tuple(
            value if processor is None or value is None else processor(value)
            for processor, value in zip(processors, raw, strict=False)
        )

    def values(self, given: Mapping[str, Any]) -> tuple[Any, ...]:
        out: list[Any] = []
        for name, fixed, processor in self.plan:
            # A bind with no value of the statement's own must be given (KeyError if not).
            value = given[name] if fixed is _GIVEN else given.get(name, fixed)
            out.append(value if processor is None or value is None else processor(value))
        return tuple(out)


class DriverStatement:
    """A prebuilt Core statement, run on the driver's cursor where that applies and
    through SQLAlchemy elsewhere (see the module docstring). Build it at import; it
    compiles for a dialect at its first run on that dialect's driver."""

    __slots__ = ("_by_dialect", "_column_keys", "_result_types", "_statement")

    def __init__(
        self,
        statement: Statement,
        *,
        column_keys: Sequence[str] | None = None,
        result_types: Sequence[TypeEngine[Any] | None] = (),
    ) -> None:
        """`column_keys`: for an INSERT, the columns every run gives (the rest keep their
        defaults), as SQLAlchemy compiles an INSERT for the keys of its parameters.
        `result_types`: the types of the returned columns whose values need converting
        (JSON decoded, say), in order; None for a column taken as the driver gives it."""
        self._statement = statement
        self._column_keys = None if column_keys is None else tuple(column_keys)
        self._result_types = tuple(result_types)
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        found = self._by_dialect.get(dialect.name)
        if found is None:
            found = _Compiled(self._statement, dialect, self._column_keys, self._result_types)
            self._by_dialect[dialect.name] = found
        return found

    def sql(self, dialect: Dialect) -> str:
        """The SQL sent on `dialect` (what tests and logs can compare)."""
        return self._compiled(dialect).sql

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> list[Any]:
        """Run once with `values` (by bind name) in `connection`'s transaction; the rows
        it returns, all read (so the driver's statement is done before the commit)."""
        if not applies_to(connection):
            result = connection.execute(self._statement, dict(values))
            return list(result.all()) if result.returns_rows else []
        compiled = self._compiled(connection.dialect)
        parameters = compiled.values(values)
        rows = _run(connection, compiled.sql, parameters, many=False).fetchall()
        if compiled.results is None:
            return rows
        return [compiled.row(row) for row in rows]

    def first(self, connection: Connection, values: Mapping[str, Any]) -> Any | None:
        """`execute`'s first row, or None."""
        rows = self.execute(connection, values)
        return rows[0] if rows else None

    def execute_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row of `rows` (one driver `executemany`)."""
        if not applies_to(connection):
            connection.execute(self._statement, [dict(row) for row in rows])
            return
        compiled = self._compiled(connection.dialect)
        parameters = [compiled.values(row) for row in rows]
        _run(connection, compiled.sql, parameters, many=True)


def execute_on_driver(connection: Connection, sql: str) -> None:
    """Run `sql`, a statement without parameters or rows (BEGIN), on the driver's
    connection, with its errors wrapped as SQLAlchemy wraps them."""
    _run(connection, sql, (), many=False)


def _run(connection: Connection, sql: str, parameters: Any, *, many: bool) -> _DriverCursor:
    driver = connection.connection.driver_connection
    if driver is None:
        raise sa_exc.ResourceClosedError("the connection is closed")
    try:
        if many:
            return driver.executemany(sql, parameters)
        return driver.execute(sql, parameters)
    except connection.dialect.loaded_dbapi.Error as error:
        raise sa_exc.DBAPIError.instance(
            sql,
            parameters,
            error,
            connection.dialect.loaded_dbapi.Error,
            hide_parameters=True,
            dialect=connection.dialect,
        ) from error
