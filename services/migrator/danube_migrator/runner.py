"""The one-shot migration: bring the database to the schema head, safely.

1. Create the database's directory if it is missing (SQLite).
2. If the database is at head already, change nothing (not even the backup) and stop.
3. If it holds anything, copy it beside itself first (`backup.take_backup`); the copy is
   kept until a later run needs a new one. On PostgreSQL there is no such copy: backups
   are the operator's (`pg_dump`, docs/operations.md), and the run logs so.
4. Run every pending migration in one transaction (see `migrations/env.py`); or, for an
   empty SQLite database, run the head schema's statements (`head_schema.sql`). A first
   `danube up`, whose database file does not exist yet, does that without this module
   (`head_schema.create_new_database`, which `main.migrate_to_head` tries first).

On PostgreSQL the database must exist (an empty one is upgraded to head); nodes that
start their migrators together are safe, as env.py takes an advisory lock first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from danube_migrator.backup import take_backup
from danube_migrator.head_schema import head_schema_statements
from danube_shared.config import DatabaseSettings, Settings
from danube_shared.db.engine import BEGIN_IMMEDIATE, MEMORY, Database
from danube_shared.db.error_translation import DATABASE_FAILURES, translate_error
from danube_shared.db.schema_head import schema_status
from danube_shared.errors import DanubeError, DatabaseError
from danube_shared.logs import get_logger
from danube_shared.program import EXIT_FAILURE, EXIT_OK

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class MigrationOutcome:
    """What a run did: the revision before and after, and the backup it took, if any."""

    before: str | None
    after: str
    backup: Path | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def run_migrate(settings: Settings) -> int:
    """The full migration (`main.migrate_to_head` tries a new file's first): exit 0 at
    head, 1 with one clear line if not."""
    try:
        asyncio.run(migrate(settings.database))
    except DanubeError as error:
        _log.error("migration failed", error=error.code, detail=error.message)
        return EXIT_FAILURE
    except Exception:  # noqa: BLE001 -- a one-shot program's last resort: one logged line, exit 1
        _log.exception("migration failed unexpectedly")
        return EXIT_FAILURE
    return EXIT_OK


async def migrate(settings: DatabaseSettings) -> MigrationOutcome:
    """Upgrade the database of `settings` to head. Raises `DanubeError`s."""
    in_memory = not settings.is_postgresql and str(settings.path) == MEMORY
    if not in_memory and not settings.is_postgresql:
        _create_directory(settings.path.absolute().parent)
    database = Database.open(settings, create=True)
    try:
        return await _migrate(database, settings, in_memory=in_memory)
    finally:
        await database.dispose()


async def _migrate(
    database: Database, settings: DatabaseSettings, *, in_memory: bool
) -> MigrationOutcome:
    status = await schema_status(database.engine)
    if status.at_head:
        _log.info("database already at head", database=database.path, revision=status.head)
        return MigrationOutcome(before=status.current, after=status.head, backup=None)
    if not status.known:
        raise DatabaseError(
            f"database {database.path} is at revision {status.current}, which this version "
            f"of Danube does not know (its head is {status.head}): a newer Danube migrated "
            "it; run that version instead, or restore the database from a backup"
        )
    backup = None
    empty = False
    if database.is_postgresql:
        _log.info(
            "no pre-migration copy on PostgreSQL; backups are the operator's (pg_dump)",
            database=database.path,
        )
    elif in_memory or not await _holds_anything(database):
        empty = True
    else:
        backup = await asyncio.to_thread(
            take_backup, settings.path.absolute(), busy_timeout_ms=settings.busy_timeout_ms
        )
        _log.info("database backed up", database=database.path, backup=str(backup))
    try:
        async with database.engine.connect() as connection:
            created = empty and await connection.run_sync(_create_at_head)
            if not created:
                await connection.run_sync(_upgrade_to_head)
    except (*DATABASE_FAILURES, DanubeError) as error:
        reason = (
            error.message
            if isinstance(error, DanubeError)
            else translate_error(error, database.path).message
        )
        kept = f"; the copy taken before is {backup}" if backup else ""
        raise DatabaseError(
            f"upgrading {database.path} from {status.current or 'empty'} to {status.head} "
            f"failed and was rolled back, the database is unchanged{kept}: {reason}"
        ) from error
    _log.info(
        "database migrated",
        database=database.path,
        from_revision=status.current,
        to_revision=status.head,
    )
    return MigrationOutcome(before=status.current, after=status.head, backup=backup)


def _upgrade_to_head(connection: Connection) -> None:
    # Alembic is imported only when there is something to upgrade: importing it costs
    # about 0.3 s of CPU that a first `danube up` does not need.
    from alembic import command
    from alembic.util import CommandError

    from danube_migrator.alembic_setup import alembic_config

    try:
        command.upgrade(alembic_config(connection=connection), "head")
    except CommandError as error:
        raise DatabaseError(str(error)) from error


def _create_at_head(connection: Connection) -> bool:
    """Give an empty SQLite database the head schema in one transaction: the models'
    CREATE statements, then the stamp of the head revision (Alembic's cookbook,
    "Building an Up to Date Database from Scratch"), as `head_schema.sql` holds them.
    False, changing nothing, if the database is no longer empty once its write lock is
    held (another migrator was first).

    Running every migration instead rebuilds tables in batch mode, which costs a first
    `danube up` several times as long; tests/migrator checks that both give the same schema.
    """
    if connection.in_transaction():
        raise RuntimeError("creating the schema needs a connection outside any transaction")
    connection.execution_options(**BEGIN_IMMEDIATE)
    with connection.begin():
        if inspect(connection).get_table_names():
            return False
        for statement in head_schema_statements():
            connection.exec_driver_sql(statement)
    return True


async def _holds_anything(database: Database) -> bool:
    async with database.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    return bool(tables)


def _create_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = (
            "a file is in the way"
            if isinstance(error, FileExistsError | NotADirectoryError)
            else error.strerror
        )
        raise DatabaseError(
            f"cannot create the database directory {directory} ({reason}); create it, "
            "writable by the account Danube runs as, or change database.path"
        ) from None
