"""Is the database at the schema head? The API asks at start-up and in `/readyz`, and
refuses to serve a schema that is not (design invariant 5); the migrator asks before it
upgrades.

The revisions are constants (`schema_revisions`), so that asking needs neither the
migrator nor Alembic (importing Alembic costs the API about 0.4 s at start).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from sqlalchemy import (
    Column,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    inspect,
    literal,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from danube_shared.db.error_translation import DATABASE_FAILURES, translate_error
from danube_shared.db.schema import Secret, User
from danube_shared.db.schema_revisions import SCHEMA_HEAD, SCHEMA_REVISIONS
from danube_shared.errors import SchemaNotAtHead

# Alembic's bookkeeping table, as Alembic creates it, read directly: building a
# MigrationContext would log two lines at every `/readyz`.
VERSION_TABLE = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """The database's revision (`None` for an empty database) and this Danube's head."""

    current: str | None
    head: str = SCHEMA_HEAD

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    @property
    def known(self) -> bool:
        """Whether the database's revision is one of this Danube's (else a newer one's)."""
        return self.current is None or self.current in SCHEMA_REVISIONS


async def schema_status(engine: AsyncEngine) -> SchemaStatus:
    """The revision the database is at, and the head. Database failures raise typed
    `DanubeError`s (`DatabaseError` when it cannot be opened)."""
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(_current_revision)
    except DATABASE_FAILURES as error:
        raise translate_error(error, database_label(engine)) from error
    return SchemaStatus(current=current)


async def ensure_at_head(engine: AsyncEngine) -> SchemaStatus:
    """The schema status; `SchemaNotAtHead` saying what to do unless it is at head."""
    status = await schema_status(engine)
    if status.at_head:
        return status
    database = database_label(engine)
    if status.current is None:
        raise SchemaNotAtHead(
            f"database {database} has no Danube schema (head is {status.head}); "
            "run `danube migrate`"
        )
    if not status.known:
        raise SchemaNotAtHead(
            f"database {database} is at revision {status.current}, which this version of "
            f"Danube does not know (its head is {status.head}): a newer Danube migrated it; "
            "run that version, or restore the database from its backup"
        )
    raise SchemaNotAtHead(
        f"database {database} is at revision {status.current}, behind the head "
        f"{status.head}; run `danube migrate`"
    )


async def holds_data(engine: AsyncEngine) -> bool:
    """Whether the database holds Danube's data: a user or a stored secret. An empty
    database, or one only migrated, holds none. `danube up` asks before it writes a key
    for a home whose database is shared (DESIGN 15): a new key there would split the
    nodes' keys."""
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_holds_data)
    except DATABASE_FAILURES as error:
        raise translate_error(error, database_label(engine)) from error


def database_label(engine: AsyncEngine) -> str:
    """The database as messages name it: a SQLite file's path (the engine's URL is a
    `file:` URI), or a PostgreSQL URL with its password hidden."""
    if engine.dialect.name != "sqlite":
        return engine.url.render_as_string(hide_password=True)
    database = engine.url.database or ":memory:"
    return unquote(database.removeprefix("file:"))


def _holds_data(connection: Connection) -> bool:
    if _current_revision(connection) is None:
        return False
    for table in (User.__table__, Secret.__table__):
        if connection.execute(select(literal(1)).select_from(table).limit(1)).first():
            return True
    return False


def _current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table(VERSION_TABLE.name):
        return None
    revisions = sorted(connection.scalars(select(VERSION_TABLE.c.version_num)).all())
    # Several rows would mean branches, which Danube's linear history never has.
    return ",".join(revisions) or None
