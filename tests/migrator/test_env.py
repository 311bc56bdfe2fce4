"""What env.py guarantees to every migration: all or nothing, and no cascade on rebuilds."""

from __future__ import annotations

import os
import sqlite3
import textwrap
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from danube_migrator.alembic_setup import MIGRATIONS_DIR, alembic_config, head_revision
from danube_shared.config import DatabaseSettings
from tests.support.postgres import sqlite_only

pytestmark = sqlite_only("batch-mode table rebuilds and SQLite's foreign-key switch")

REBUILD_TEAMS = """
    with op.batch_alter_table("teams", recreate="always") as batch:
        batch.add_column(sa.Column("description", sa.String(200)))
"""
CREATE_THEN_FAIL = """
    op.create_table("scratch", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO scratch (id) VALUES (1)")
    raise RuntimeError("this migration fails halfway")
"""


def config_with_extra_migration(tmp_path: Path, database: Path, upgrade_body: str) -> Config:
    """The real migrations plus one more after the head, in a directory of its own."""
    extra = tmp_path / "extra_versions"
    extra.mkdir()
    body = textwrap.indent(textwrap.dedent(upgrade_body).strip(), "    ")
    (extra / "9000_extra.py").write_text(
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        'revision = "9000"\n'
        f"down_revision = {head_revision()!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        f"def upgrade():\n{body}\n\n\n"
        "def downgrade():\n    pass\n"
    )
    config = alembic_config(database=DatabaseSettings(path=database))
    config.set_main_option(
        "version_locations", os.pathsep.join([str(MIGRATIONS_DIR / "versions"), str(extra)])
    )
    return config


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def seed(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute(
            "INSERT INTO teams (id, name, created_at) VALUES ('t1', 'platform', '2026-01-01 00:00:00')"
        )
        connection.execute(
            "INSERT INTO pipelines (id, team_id, name, steps, created_at, updated_at) "
            "VALUES ('p1', 't1', 'build', '[]', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
        connection.commit()
    finally:
        connection.close()


def test_rebuilding_a_referenced_table_does_not_cascade_delete(
    tmp_path: Path, migrated_db_path: Path
):
    """Batch mode drops and recreates `teams`; with foreign keys on, that drop would delete
    every pipeline. env.py turns them off around the migration and checks them after."""
    seed(migrated_db_path)
    command.upgrade(config_with_extra_migration(tmp_path, migrated_db_path, REBUILD_TEAMS), "heads")
    assert query(migrated_db_path, "SELECT id, team_id FROM pipelines") == [("p1", "t1")]
    assert query(migrated_db_path, "SELECT name, description FROM teams") == [("platform", None)]
    assert query(migrated_db_path, "SELECT version_num FROM alembic_version") == [("9000",)]


def test_a_migration_that_fails_halfway_changes_nothing(tmp_path: Path, migrated_db_path: Path):
    seed(migrated_db_path)
    before = query(migrated_db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    config = config_with_extra_migration(tmp_path, migrated_db_path, CREATE_THEN_FAIL)
    with pytest.raises(RuntimeError, match="fails halfway"):
        command.upgrade(config, "heads")
    after = query(migrated_db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    assert after == before  # no `scratch` table: the DDL was rolled back too
    assert query(migrated_db_path, "SELECT version_num FROM alembic_version") == [
        (head_revision(),)
    ]
    assert query(migrated_db_path, "SELECT count(*) FROM pipelines") == [(1,)]
