"""Alembic's environment for Danube's migrations (loaded by Alembic, never imported).

All pending migrations run in one transaction (begun IMMEDIATE on SQLite), so a failure
leaves the database as it was. On PostgreSQL the transaction first takes an advisory lock,
so that migrators of several nodes started together run one after the other: the later
ones find the database at head. Batch mode (copy and move tables) is only for SQLite,
which cannot alter most of a table in place. On SQLite, foreign keys are switched off around that transaction,
as SQLite's procedure for schema changes asks: batch mode rebuilds a table by copying it
and dropping the original, and with foreign keys on, that drop would cascade-delete the
rows that refer to it. `PRAGMA foreign_key_check` runs before the commit instead.

It runs on the connection given in the config's attributes (the migrator's, from inside
its event loop), or opens the database given there on an async engine of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from danube_migrator.alembic_setup import (
    CONNECTION,
    DATABASE,
    MIGRATION_LOCK_KEY,
    TARGET_METADATA,
)
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import BEGIN_IMMEDIATE, Database
from danube_shared.db.schema import Base
from danube_shared.db.timestamps import UTCDateTime
from danube_shared.errors import DatabaseError


def _target_metadata() -> MetaData:
    metadata = context.config.attributes.get(TARGET_METADATA)
    return metadata if isinstance(metadata, MetaData) else Base.metadata


def _render_item(kind: str, item: Any, _context: AutogenContext) -> str | Literal[False]:
    # Migrations say what is stored, without importing Danube's column types.
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations(connection: Connection) -> None:
    if connection.in_transaction():
        raise RuntimeError("env.py needs a connection outside any transaction")
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _set_foreign_keys(connection, enabled=False)
        connection.execution_options(**BEGIN_IMMEDIATE)
    try:
        with connection.begin():
            if not sqlite:
                # Released at commit or rollback; Alembic reads the revision after it.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            context.configure(
                connection=connection,
                target_metadata=_target_metadata(),
                render_as_batch=sqlite,
                transactional_ddl=True,
                compare_type=True,
                render_item=_render_item,
            )
            with context.begin_transaction():
                context.run_migrations()
            if sqlite:
                _check_foreign_keys(connection)
    finally:
        if sqlite:
            _set_foreign_keys(connection, enabled=True)


def _set_foreign_keys(connection: Connection, *, enabled: bool) -> None:
    # On the DBAPI connection: through SQLAlchemy the PRAGMA would begin a transaction,
    # inside which SQLite ignores it.
    cursor = connection.connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON" if enabled else "PRAGMA foreign_keys = OFF")
    finally:
        cursor.close()


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        tables = sorted({str(row[0]) for row in broken})
        raise DatabaseError(
            f"the migration would leave {len(broken)} rows referring to missing rows (in "
            f"{', '.join(tables)}); it was rolled back and nothing changed"
        )


async def _run_on_database(settings: DatabaseSettings) -> None:
    database = Database.open(settings, create=True)
    try:
        async with database.engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await database.dispose()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("Danube's migrations run on a database, not as SQL scripts")
    connection = context.config.attributes.get(CONNECTION)
    if isinstance(connection, Connection):
        run_migrations(connection)
        return
    settings = context.config.attributes.get(DATABASE)
    if isinstance(settings, DatabaseSettings):
        asyncio.run(_run_on_database(settings))
        return
    raise RuntimeError("run Danube's migrations through danube_migrator (`danube migrate`)")


_main()
