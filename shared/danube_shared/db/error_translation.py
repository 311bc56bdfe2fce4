"""Turn SQLite and SQLAlchemy failures into Danube's typed errors.

Messages are built from SQLite's error code and the database path only. SQLAlchemy's own
text (the SQL and its parameters) never goes into one, so no stored value can leak into
an error, a log line or an HTTP response.
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


def sqlite_error_code(error: BaseException) -> int | None:
    """SQLite's extended result code behind `error`, if it came from SQLite."""
    original = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    if isinstance(original, sqlite3.Error):
        return original.sqlite_errorcode
    return None


def is_unique_violation(error: BaseException) -> bool:
    return sqlite_error_code(error) in (SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY)


def is_foreign_key_violation(error: BaseException) -> bool:
    """A row refers to one that does not exist (or a referred-to row is still referred to)."""
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
    """The Danube error for a failure of the database at `database` (a path, for messages)."""
    if isinstance(error, DanubeError):
        return error
    if isinstance(error, sa_exc.TimeoutError):
        return DatabaseError(
            f"database {database}: no connection became free within database.busy_timeout_ms; "
            "the database is overloaded or a unit of work is stuck; retry, or raise the timeout"
        )
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
