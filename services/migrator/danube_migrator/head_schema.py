"""The head schema of a SQLite database, as SQL, and a first run's way to create it.

`head_schema.sql` holds what SQLAlchemy emits to create the models' tables and indexes
on SQLite, then Alembic's table and the head revision: the statements a new database
needs to be at head. `tests/migrator` checks that the file is what the models render
(`python -m danube_migrator.render_head_schema` writes it) and that it gives the schema
the migrations build.

A first `danube up` meets a database file that does not exist yet. This module creates
it with `sqlite3` alone, so the migrator's start does not import SQLAlchemy: about 0.35 s
of CPU spent while the API and keyd start beside it on the same cores. Anything other
than a missing file, or any failure here, is left to the full migration (`runner`),
which has the backups, the upgrades and the errors that say what to do.
"""

from __future__ import annotations

import sqlite3
from functools import cache
from pathlib import Path
from typing import Final

from danube_shared.config import DatabaseSettings
from danube_shared.db.schema_revisions import SCHEMA_HEAD
from danube_shared.logs import get_logger

HEAD_SCHEMA_FILE: Final = Path(__file__).with_name("head_schema.sql")
STATEMENT_END: Final = ";\n"

_log = get_logger(__name__)


@cache
def head_schema_statements() -> tuple[str, ...]:
    """The statements of `head_schema.sql`, each without its closing `;`, its comment
    lines (`--`) left out."""
    lines = HEAD_SCHEMA_FILE.read_text(encoding="utf-8").splitlines(keepends=True)
    text = "".join(line for line in lines if not line.startswith("--"))
    return tuple(part.strip() for part in text.split(STATEMENT_END) if part.strip())


def create_new_database(settings: DatabaseSettings) -> bool:
    """Give a SQLite database file that does not exist yet the head schema, in one
    transaction; True when done. False, having changed nothing a later migration would
    mind, for PostgreSQL, an in-memory database, a file that exists, or any failure:
    those take the full migration."""
    if settings.is_postgresql or str(settings.path) == ":memory:":
        return False
    path = settings.path.absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return False
        created = _create(path, settings.busy_timeout_ms)
    except (OSError, sqlite3.Error):
        return False
    if created:
        _log.info(
            "database migrated", database=str(path), from_revision=None, to_revision=SCHEMA_HEAD
        )
    return created


def _create(path: Path, busy_timeout_ms: int) -> bool:
    # `mode=rwc` creates the file; a second migrator racing this one opens the same file
    # and waits for the write lock below, then finds the schema there.
    connection = sqlite3.connect(f"file:{path}?mode=rwc", uri=True, isolation_level=None)
    try:
        # The pragmas every connection of `Database` sets (engine.py); WAL is the file's.
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("BEGIN IMMEDIATE")
        try:
            if connection.execute("SELECT count(*) FROM sqlite_master").fetchone() != (0,):
                connection.execute("ROLLBACK")
                return False
            for statement in head_schema_statements():
                connection.execute(statement)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return True
    finally:
        connection.close()
