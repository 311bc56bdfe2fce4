"""The migrator's run: directory, idempotence, the backup, refusals; and the head check."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from danube_migrator.alembic_setup import head_revision
from danube_migrator.backup import backup_path
from danube_migrator.runner import MigrationOutcome, migrate
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.schema import Base
from danube_shared.db.schema_head import ensure_at_head, schema_status
from danube_shared.errors import DatabaseError, SchemaNotAtHead
from tests.support.postgres import sqlite_only

pytestmark = sqlite_only(
    "the database file, its directory and its pre-migration copy (test_postgresql covers the run on PostgreSQL)"
)


def execute(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def add_team(path: Path, name: str) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute(
            "INSERT INTO teams VALUES (?, ?, '2026-01-01 00:00:00')", (f"{name}-id", name)
        )
        connection.commit()
    finally:
        connection.close()


async def test_migrating_creates_the_missing_directories_and_reaches_head(tmp_path: Path):
    path = tmp_path / "var" / "lib" / "danube" / "danube.db"
    outcome = await migrate(DatabaseSettings(path=path))
    assert (outcome.before, outcome.after, outcome.backup) == (None, head_revision(), None)
    assert query(path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert query(path, "PRAGMA journal_mode") == [("wal",)]


async def test_two_migrators_on_one_new_database_leave_it_at_head(tmp_path: Path):
    """Two migrators on one new database file: one creates the schema; the other finds it
    created and changes nothing, or (about once in fifteen runs here) meets SQLite's lock
    while the first turns the new file to WAL and fails with a DatabaseError that says to
    retry, which then finds the database at head. Nothing is half-made either way."""
    path = tmp_path / "danube.db"
    outcomes = await asyncio.gather(
        migrate(DatabaseSettings(path=path)),
        migrate(DatabaseSettings(path=path)),
        return_exceptions=True,
    )
    reached = [outcome for outcome in outcomes if isinstance(outcome, MigrationOutcome)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, MigrationOutcome)]
    assert reached, refused
    assert all(outcome.after == head_revision() for outcome in reached)
    for error in refused:
        assert isinstance(error, DatabaseError), error
        assert "retry" in error.message
        assert (await migrate(DatabaseSettings(path=path))).after == head_revision()
    assert query(path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    tables = {row[0] for row in query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {*Base.metadata.tables, "alembic_version"}


async def test_a_second_run_changes_nothing_and_takes_no_backup(migrated_db_path: Path):
    add_team(migrated_db_path, "kept")
    before = query(migrated_db_path, "SELECT * FROM sqlite_master ORDER BY name")
    outcome = await migrate(DatabaseSettings(path=migrated_db_path))
    assert not outcome.changed
    assert outcome.backup is None
    assert not backup_path(migrated_db_path).exists()
    assert query(migrated_db_path, "SELECT * FROM sqlite_master ORDER BY name") == before
    assert query(migrated_db_path, "SELECT name FROM teams") == [("kept",)]


async def test_a_database_holding_data_is_backed_up_before_it_is_upgraded(tmp_path: Path):
    path = tmp_path / "danube.db"
    execute(path, "CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('keep me')")
    path.chmod(0o640)
    outcome = await migrate(DatabaseSettings(path=path))
    assert outcome.backup is not None
    assert outcome.backup == backup_path(path) == tmp_path / "danube.db.pre-migrate.bak"
    assert query(outcome.backup, "SELECT body FROM notes") == [("keep me",)]
    assert query(outcome.backup, "SELECT name FROM sqlite_master WHERE type = 'table'") == [
        ("notes",)
    ]  # the state before the migration
    assert query(outcome.backup, "PRAGMA integrity_check") == [("ok",)]
    assert query(outcome.backup, "PRAGMA journal_mode") == [("delete",)]  # one whole file
    assert stat.S_IMODE(outcome.backup.stat().st_mode) == 0o640
    assert query(path, "SELECT body FROM notes") == [("keep me",)]


async def test_an_empty_database_is_not_backed_up(tmp_path: Path):
    path = tmp_path / "danube.db"
    execute(path, "PRAGMA user_version = 0")
    outcome = await migrate(DatabaseSettings(path=path))
    assert outcome.changed
    assert outcome.backup is None
    assert not backup_path(path).exists()


async def test_the_backup_stays_until_a_later_upgrade_replaces_it(tmp_path: Path):
    path = tmp_path / "danube.db"
    execute(path, "CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('first')")
    first = await migrate(DatabaseSettings(path=path))
    assert first.backup is not None
    taken = first.backup.stat().st_mtime_ns

    await migrate(DatabaseSettings(path=path))  # at head: the backup is left alone
    assert first.backup.stat().st_mtime_ns == taken

    execute(path, "UPDATE notes SET body = 'second'", "DELETE FROM alembic_version")
    for table in reversed(Base.metadata.sorted_tables):
        execute(path, f"DROP TABLE {table.name}")
    second = await migrate(DatabaseSettings(path=path))
    assert second.backup is not None
    assert second.backup == first.backup
    assert query(second.backup, "SELECT body FROM notes") == [("second",)]
    assert not second.backup.with_name(second.backup.name + ".partial").exists()


async def test_a_failed_upgrade_leaves_the_database_unchanged_and_says_where_the_backup_is(
    migrated_db_path: Path,
):
    add_team(migrated_db_path, "precious")
    # The tables exist but Alembic's record of them is gone: creating them again fails.
    execute(migrated_db_path, "DELETE FROM alembic_version")
    schema = query(migrated_db_path, "SELECT * FROM sqlite_master ORDER BY name")
    with pytest.raises(DatabaseError) as raised:
        await migrate(DatabaseSettings(path=migrated_db_path))
    message = raised.value.message
    assert "rolled back, the database is unchanged" in message
    assert str(backup_path(migrated_db_path)) in message
    assert "table teams already exists" in message
    assert query(migrated_db_path, "SELECT * FROM sqlite_master ORDER BY name") == schema
    assert query(migrated_db_path, "SELECT name FROM teams") == [("precious",)]
    assert query(backup_path(migrated_db_path), "SELECT name FROM teams") == [("precious",)]


async def test_a_database_migrated_by_a_newer_danube_is_refused(migrated_db_path: Path):
    execute(migrated_db_path, "UPDATE alembic_version SET version_num = 'f00dcafe'")
    with pytest.raises(DatabaseError, match="f00dcafe, which this version of Danube does not know"):
        await migrate(DatabaseSettings(path=migrated_db_path))
    assert not backup_path(migrated_db_path).exists()


async def test_a_directory_that_cannot_be_created_is_a_database_error(tmp_path: Path):
    (tmp_path / "occupied").write_text("a file where a directory should be")
    with pytest.raises(DatabaseError, match="cannot create the database directory"):
        await migrate(DatabaseSettings(path=tmp_path / "occupied" / "danube.db"))


async def test_the_head_check_passes_on_a_migrated_database(database: Database):
    status = await ensure_at_head(database.engine)
    assert status.at_head
    assert status.current == status.head == head_revision()


async def test_the_head_check_says_to_migrate_an_empty_database(tmp_path: Path):
    db = Database.open(DatabaseSettings(path=tmp_path / "danube.db"), create=True)
    try:
        status = await schema_status(db.engine)
        assert (status.current, status.at_head) == (None, False)
        with pytest.raises(SchemaNotAtHead, match=r"has no Danube schema.*run `danube migrate`"):
            await ensure_at_head(db.engine)
    finally:
        await db.dispose()


async def test_the_head_check_refuses_an_unknown_revision(
    database: Database, migrated_db_path: Path
):
    execute(migrated_db_path, "UPDATE alembic_version SET version_num = 'f00dcafe'")
    with pytest.raises(SchemaNotAtHead, match="newer Danube"):
        await ensure_at_head(database.engine)


async def test_the_head_check_of_a_missing_database_is_a_database_error(tmp_path: Path):
    db = Database.open(DatabaseSettings(path=tmp_path / "absent.db"))
    try:
        with pytest.raises(DatabaseError, match="does not exist; run `danube migrate`"):
            await schema_status(db.engine)
    finally:
        await db.dispose()
