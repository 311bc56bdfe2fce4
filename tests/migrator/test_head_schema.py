"""A new SQLite database at head from `head_schema.sql`: the file is what the models
render, it builds what the migrations build, and the migrator's first run uses it without
importing SQLAlchemy."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from alembic import command

from danube_migrator.alembic_setup import alembic_config, head_revision
from danube_migrator.head_schema import HEAD_SCHEMA_FILE, create_new_database
from danube_migrator.render_head_schema import render_head_schema
from danube_shared.config import DatabaseSettings
from tests.migrator.test_migrations import revision_of, schema_of, version_table_of
from tests.support.postgres import sqlite_only

pytestmark = sqlite_only("a SQLite database file (PostgreSQL always takes the full migration)")


def test_the_file_is_what_the_models_render():
    assert HEAD_SCHEMA_FILE.read_text(encoding="utf-8") == render_head_schema(), (
        "head_schema.sql differs from the models: run "
        "`uv run python -m danube_migrator.render_head_schema`"
    )


def test_a_new_file_gets_the_schema_and_stamp_the_migrations_build(tmp_path: Path):
    by_scripts = tmp_path / "by-scripts.db"
    command.upgrade(alembic_config(database=DatabaseSettings(path=by_scripts)), "head")
    new = tmp_path / "new" / "danube.db"
    assert create_new_database(DatabaseSettings(path=new))
    assert schema_of(new) == schema_of(by_scripts)
    assert version_table_of(new) == version_table_of(by_scripts)
    assert revision_of(new) == [head_revision()]
    connection = sqlite3.connect(new)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()


def test_an_existing_file_is_left_to_the_full_migration(tmp_path: Path):
    path = tmp_path / "danube.db"
    path.write_bytes(b"")
    assert not create_new_database(DatabaseSettings(path=path))
    assert path.read_bytes() == b""


def test_an_in_memory_database_is_left_to_the_full_migration():
    assert not create_new_database(DatabaseSettings(path=Path(":memory:")))


def test_a_directory_that_cannot_be_made_is_left_to_the_full_migration(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    assert not create_new_database(DatabaseSettings(path=blocker / "danube.db"))


def test_two_first_runs_on_one_new_file_create_the_schema_once(tmp_path: Path):
    path = tmp_path / "danube.db"
    settings = DatabaseSettings(path=path)
    start = threading.Barrier(2)
    created: list[bool] = []

    def first_run() -> None:
        start.wait()
        created.append(create_new_database(settings))

    threads = [threading.Thread(target=first_run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert created.count(True) <= 1
    assert revision_of(path) == [head_revision()] or created.count(True) == 0
    # Whoever lost (or both, had SQLite's lock refused the WAL switch) leaves the file
    # to the full migration, which finds it at head or empty, never half-made.
    connection = sqlite3.connect(path)
    try:
        tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        connection.close()
    assert tables in ((0,), (len(schema_of(path)) + 2,))


def test_the_migrators_first_run_does_not_import_sqlalchemy(tmp_path: Path):
    config = tmp_path / "danube.toml"
    database = tmp_path / "data" / "danube.db"
    config.write_text(f'[database]\npath = "{database}"\n', encoding="utf-8")
    probe = (
        "import sys\n"
        "from danube_migrator.main import main\n"
        f"code = main(['--config', {str(config)!r}])\n"
        "print('sqlalchemy' in sys.modules, code, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stderr.strip().splitlines()[-1] == "False 0", result.stderr
    assert revision_of(database) == [head_revision()]
