"""Turn SQLite, PostgreSQL and SQLAlchemy failures into Danube's typed errors.

The same failure means the same error on both engines: a unique violation is a `Conflict`
(409), a foreign-key violation a `NotFound` (404), a check or not-null violation an
`InvalidInput`, a missing table `SchemaNotAtHead`, and a database that cannot be reached
or used a `DatabaseError` (503).

Messages are built from SQLite's error code or PostgreSQL's SQLSTATE, the server's primary
message (which names constraints, tables and columns, never values: PostgreSQL puts values
in its DETAIL field, which is never used) and the database's label: a path, or the URL
with its password hidden. SQLAlchemy's own text (the SQL and its parameters) never goes
into one, so no stored value and no password can leak into an error, a log line or an
HTTP response.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

from danube_shared.errors import (
    Conflict,
    DanubeError,
    DatabaseError,
    InvalidInput,
    NotFound,
    SchemaNotAtHead,
)

# What a database failure can raise: SQLAlchemy's wrapped driver errors and pool timeout,
# and what asyncpg's connect raises unwrapped (OSError: no socket, refused; TimeoutError).
DATABASE_FAILURES = (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError, TimeoutError)

# SQLite result codes (https://sqlite.org/rescode.html); primary codes are the low byte.
SQLITE_ERROR = 1
SQLITE_PERM = 3
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_CONSTRAINT = 19
SQLITE_NOTADB = 26
SQLITE_CONSTRAINT_CHECK = 275
SQLITE_CONSTRAINT_FOREIGNKEY = 787
SQLITE_CONSTRAINT_NOTNULL = 1299
SQLITE_CONSTRAINT_PRIMARYKEY = 1555
SQLITE_CONSTRAINT_UNIQUE = 2067


# PostgreSQL's SQLSTATE codes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
PG_UNIQUE_VIOLATION = "23505"
PG_FOREIGN_KEY_VIOLATION = "23503"
PG_CHECK_VIOLATION = "23514"
PG_NOT_NULL_VIOLATION = "23502"
PG_STRING_TOO_LONG = "22001"
PG_UNDEFINED_TABLE = "42P01"
PG_UNDEFINED_COLUMN = "42703"
PG_LOCK_NOT_AVAILABLE = "55P03"
PG_READ_ONLY_TRANSACTION = "25006"
PG_UNKNOWN_DATABASE = "3D000"
PG_SERIALIZATION_FAILURE = "40001"
PG_DEADLOCK = "40P01"


def sqlite_error_code(error: BaseException) -> int | None:
    """SQLite's extended result code behind `error`, if it came from SQLite."""
    original = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    if isinstance(original, sqlite3.Error):
        return original.sqlite_errorcode
    return None


def postgresql_sqlstate(error: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE behind `error`, if it came from the server through asyncpg.

    SQLAlchemy wraps asyncpg's exception in its DBAPI adapter's, which carries the code
    as the public `sqlstate` attribute."""
    original = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    code = getattr(original, "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def is_unique_violation(error: BaseException) -> bool:
    if postgresql_sqlstate(error) == PG_UNIQUE_VIOLATION:
        return True
    return sqlite_error_code(error) in (SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY)


def is_foreign_key_violation(error: BaseException) -> bool:
    """A row refers to one that does not exist (or a referred-to row is still referred to)."""
    if postgresql_sqlstate(error) == PG_FOREIGN_KEY_VIOLATION:
        return True
    return sqlite_error_code(error) == SQLITE_CONSTRAINT_FOREIGNKEY


_LOCKED = (
    "database {database} stayed locked by another writer longer than database.busy_timeout_ms; "
    "retry, and if it persists find the process holding the write lock or raise "
    "database.busy_timeout_ms"
)
_CANNOT_OPEN = (
    "cannot open database {database}; check that database.path names a file (not a "
    "directory) and that the file and its directory are readable and writable by the "
    "account Danube runs as"
)
_NOT_A_DATABASE = (
    "{database} is not a Danube database or is corrupt; check database.path, or restore it "
    "from a backup"
)
# What to say for each primary result code; `{detail}` is SQLite's own message.
_MESSAGES: dict[int, str] = {
    SQLITE_BUSY: _LOCKED,
    SQLITE_LOCKED: _LOCKED,
    SQLITE_READONLY: (
        "database {database} is read-only; make the file, its -wal and -shm files and their "
        "directory writable by the account Danube runs as"
    ),
    SQLITE_FULL: (
        "database {database}: the disk (or the database's size limit) is full; free some "
        "space and retry; nothing was written"
    ),
    SQLITE_CANTOPEN: _CANNOT_OPEN,
    SQLITE_PERM: _CANNOT_OPEN,
    SQLITE_CORRUPT: _NOT_A_DATABASE,
    SQLITE_NOTADB: _NOT_A_DATABASE,
    SQLITE_IOERR: (
        "database {database}: input/output error ({detail}); check the disk and the "
        "filesystem holding the database"
    ),
}


def translate_error(error: BaseException, database: str) -> DanubeError:
    """The Danube error for a failure of the database labelled `database` (a path, or a URL
    without its password, for messages)."""
    if isinstance(error, DanubeError):
        return error
    if isinstance(error, sa_exc.TimeoutError | OSError | TimeoutError):
        return _wait_error(error, database)
    sqlstate = postgresql_sqlstate(error)
    if sqlstate is not None:
        return _postgresql_error(sqlstate, _postgresql_message(error), database)
    return _sqlite_error(error, database)


def _wait_error(error: BaseException, database: str) -> DatabaseError:
    if isinstance(error, sa_exc.TimeoutError):
        return DatabaseError(
            f"database {database}: no connection became free in time (database.pool_timeout_s "
            "on PostgreSQL, database.busy_timeout_ms on SQLite); the database is overloaded or "
            "a unit of work is stuck; retry, or raise the timeout"
        )
    # asyncpg's connect fails with these unwrapped: no socket, refused, timed out.
    reason = error.strerror if isinstance(error, OSError) and error.strerror else "timed out"
    return DatabaseError(
        f"cannot connect to database {database} ({reason}); check that the server runs "
        "and that database.url names it"
    )


def _sqlite_error(error: BaseException, database: str) -> DanubeError:
    code = sqlite_error_code(error)
    if code is None:
        return DatabaseError(
            f"database {database}: unexpected failure ({type(error).__name__}); "
            "check the logs of this process"
        )
    primary = code & 0xFF
    detail = _sqlite_message(error)
    if primary == SQLITE_CONSTRAINT:
        return _constraint_error(code, detail)
    if primary == SQLITE_ERROR and detail.startswith(("no such table", "no such column")):
        return SchemaNotAtHead(
            f"database {database} does not have Danube's current schema ({detail}); "
            "run `danube migrate`"
        )
    template = _MESSAGES.get(primary, "database {database}: SQLite error ({detail})")
    return DatabaseError(template.format(database=database, detail=detail))


def _sqlite_message(error: BaseException) -> str:
    # SQLite's own message names tables, columns and constraints, never values.
    original = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    return str(original.args[0]) if original is not None and original.args else "unknown"


def _constraint_error(code: int, detail: str) -> DanubeError:
    if code in (SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY):
        return Conflict(f"a row with the same unique values already exists ({detail})")
    if code == SQLITE_CONSTRAINT_FOREIGNKEY:
        return NotFound("a row this one refers to does not exist (or is still referred to)")
    if code in (SQLITE_CONSTRAINT_CHECK, SQLITE_CONSTRAINT_NOTNULL):
        return InvalidInput(f"a value is not acceptable ({detail})")
    return Conflict(f"the change conflicts with the stored data ({detail})")


def _postgresql_message(error: BaseException) -> str:
    """The server's primary message: it names constraints, tables and columns, never values
    (those are in the DETAIL field, which is left out)."""
    original = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    cause = original.__cause__ if original is not None else None
    message = getattr(cause, "message", None)
    if isinstance(message, str) and message:
        return message
    # A broken connection has no server message; the driver's error class says what broke.
    return type(cause).__name__ if cause is not None else "unknown"


def _postgresql_error(sqlstate: str, detail: str, database: str) -> DanubeError:
    if sqlstate == PG_UNIQUE_VIOLATION:
        return Conflict(f"a row with the same unique values already exists ({detail})")
    if sqlstate == PG_FOREIGN_KEY_VIOLATION:
        return NotFound("a row this one refers to does not exist (or is still referred to)")
    if sqlstate in (PG_CHECK_VIOLATION, PG_NOT_NULL_VIOLATION, PG_STRING_TOO_LONG):
        return InvalidInput(f"a value is not acceptable ({detail})")
    if sqlstate.startswith("23"):
        return Conflict(f"the change conflicts with the stored data ({detail})")
    if sqlstate in (PG_UNDEFINED_TABLE, PG_UNDEFINED_COLUMN):
        return SchemaNotAtHead(
            f"database {database} does not have Danube's current schema ({detail}); "
            "run `danube migrate`"
        )
    return DatabaseError(_postgresql_failure(sqlstate, detail, database))


# What to say for a PostgreSQL failure that is not the caller's: by SQLSTATE, then by its
# class (the first two characters). `{detail}` is the server's primary message.
_PG_MESSAGES: dict[str, str] = {
    PG_LOCK_NOT_AVAILABLE: (
        "database {database}: a row or table stayed locked by another transaction longer "
        "than database.busy_timeout_ms; retry, and if it persists find the session holding "
        "the lock (pg_stat_activity)"
    ),
    PG_SERIALIZATION_FAILURE: (
        "database {database}: the transaction collided with another ({detail}); retry"
    ),
    PG_DEADLOCK: "database {database}: the transaction collided with another ({detail}); retry",
    PG_UNKNOWN_DATABASE: (
        "database {database} does not exist on the server; create it (createdb) and run "
        "`danube migrate`, or check database.url"
    ),
    PG_READ_ONLY_TRANSACTION: (
        "database {database} is read-only (a standby, or default_transaction_read_only); "
        "point database.url at the primary"
    ),
}
_PG_UNAVAILABLE = (
    "database {database} is unavailable ({detail}); check that the server runs and accepts "
    "connections, then retry"
)
_PG_CLASS_MESSAGES: dict[str, str] = {
    "28": (
        "database {database} refused the account or its credentials ({detail}); check the "
        "user in database.url and the server's pg_hba.conf"
    ),
    "08": _PG_UNAVAILABLE,  # connection exception
    "57": _PG_UNAVAILABLE,  # operator intervention: shutting down, starting up
    "53": _PG_UNAVAILABLE,  # insufficient resources: too many connections, disk full
}


def _postgresql_failure(sqlstate: str, detail: str, database: str) -> str:
    template = _PG_MESSAGES.get(sqlstate) or _PG_CLASS_MESSAGES.get(
        sqlstate[:2], "database {database}: PostgreSQL error " + sqlstate + " ({detail})"
    )
    return template.format(database=database, detail=detail)
