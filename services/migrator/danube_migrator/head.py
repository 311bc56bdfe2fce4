"""Is the database at the migration head? The API asks at start-up and in `/readyz`, and
refuses to serve a schema that is not (design invariant 5)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from sqlalchemy import Column, MetaData, String, Table, inspect, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from danube_migrator.alembic_setup import head_revision, is_known_revision
from danube_shared.db.error_translation import translate_error
from danube_shared.errors import SchemaNotAtHead

# Alembic's bookkeeping table, read directly: building a MigrationContext would log two
# lines at every `/readyz`.
_VERSION_TABLE = Table("alembic_version", MetaData(), Column("version_num", String(32)))


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """The database's revision (`None` for an empty database) and this Danube's head."""

    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


async def schema_status(engine: AsyncEngine) -> SchemaStatus:
    """The revision the database is at, and the head. Database failures raise typed
    `DanubeError`s (`DatabaseError` when it cannot be opened)."""
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(_current_revision)
    except (sa_exc.DBAPIError, sa_exc.TimeoutError) as error:
        raise translate_error(error, database_label(engine)) from error
    return SchemaStatus(current=current, head=head_revision())


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
    if not is_known_revision(status.current):
        raise SchemaNotAtHead(
            f"database {database} is at revision {status.current}, which this version of "
            f"Danube does not know (its head is {status.head}): a newer Danube migrated it; "
            "run that version, or restore the database from its backup"
        )
    raise SchemaNotAtHead(
        f"database {database} is at revision {status.current}, behind the head "
        f"{status.head}; run `danube migrate`"
    )


def database_label(engine: AsyncEngine) -> str:
    """The database's path as messages name it (the engine's URL is a `file:` URI)."""
    database = engine.url.database or ":memory:"
    return unquote(database.removeprefix("file:"))


def _current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table(_VERSION_TABLE.name):
        return None
    revisions = sorted(connection.scalars(select(_VERSION_TABLE.c.version_num)).all())
    # Several rows would mean branches, which Danube's linear history never has.
    return ",".join(revisions) or None
