"""`danube-migrate` and `danube migrate` as real processes: exit codes and what they print."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command

from danube_migrator.alembic_setup import alembic_config, head_revision
from danube_migrator.backup import backup_path
from danube_shared.config import DatabaseSettings
from danube_shared.db.schema_head import SCHEMA_REVISIONS
from tests.support.isolation import program_environment
from tests.support.postgres import sqlite_only

pytestmark = sqlite_only(
    "checks the SQLite file the command makes (test_postgresql runs danube-migrate on PostgreSQL)"
)

BIN = Path(sys.executable).parent


def write_config(directory: Path, database: Path, extra: str = "") -> Path:
    config = directory / "danube.toml"
    config.write_text(f'[database]\npath = "{database}"\n{extra}')
    return config


def run(*command: str) -> subprocess.CompletedProcess[str]:
    # Only the config file given on the command line counts, not the test runner's.
    environment = program_environment()
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def log_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stderr.splitlines()]


def revision(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    finally:
        connection.close()


def test_danube_migrate_creates_an_empty_database_at_head_logs_json_and_exits_0(
    tmp_path: Path,
):
    database = tmp_path / "data" / "danube.db"
    result = run("danube-migrate", "--config", str(write_config(tmp_path, database)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = log_lines(result)  # every line is a JSON object
    # A new file is created from head_schema.sql, without the full migration.
    assert {line["logger"] for line in lines} == {"danube_migrator.head_schema"}
    assert lines[-1]["message"] == "database migrated"
    assert lines[-1]["to_revision"] == head_revision()
    assert revision(database) == [head_revision()]


def test_danube_migrate_upgrades_an_older_database_logs_json_and_exits_0(tmp_path: Path):
    database = tmp_path / "danube.db"
    command.upgrade(alembic_config(database=DatabaseSettings(path=database)), SCHEMA_REVISIONS[0])
    result = run("danube-migrate", "--config", str(write_config(tmp_path, database)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = log_lines(result)  # every line is a JSON object, Alembic's included
    assert {line["logger"] for line in lines} >= {
        "danube_migrator.runner",
        "alembic.runtime.migration",
    }
    assert lines[-1]["message"] == "database migrated"
    assert lines[-1]["to_revision"] == head_revision()
    assert revision(database) == [head_revision()]


def test_a_second_run_exits_0_and_changes_nothing(tmp_path: Path):
    database = tmp_path / "danube.db"
    config = str(write_config(tmp_path, database))
    assert run("danube-migrate", "--config", config).returncode == 0
    second = run("danube-migrate", "--config", config)
    assert second.returncode == 0, second.stderr
    assert [line["message"] for line in log_lines(second)] == ["database already at head"]
    assert not backup_path(database).exists()


def test_danube_migrate_is_also_a_subcommand_of_danube(tmp_path: Path):
    database = tmp_path / "danube.db"
    result = run("danube", "migrate", "--config", str(write_config(tmp_path, database)))
    assert result.returncode == 0, result.stderr
    assert revision(database) == [head_revision()]


@pytest.mark.parametrize(
    "where",
    ["under a file", "is a directory"],
)
def test_an_unusable_database_path_exits_1_with_one_clear_line(tmp_path: Path, where: str):
    if where == "under a file":
        (tmp_path / "occupied").write_text("not a directory")
        database = tmp_path / "occupied" / "danube.db"
    else:
        database = tmp_path / "danube.db"
        database.mkdir()
    result = run("danube-migrate", "--config", str(write_config(tmp_path, database)))
    assert result.returncode == 1
    (line,) = log_lines(result)
    assert line["level"] == "error"
    assert line["message"] == "migration failed"
    assert line["error"] == "database_unavailable"
    assert str(database.parent if where == "under a file" else database) in str(line["detail"])
    assert "Traceback" not in result.stderr


def test_a_bad_config_exits_2_naming_the_key(tmp_path: Path):
    config = write_config(tmp_path, tmp_path / "danube.db", extra="busy_timeout = 5\n")
    result = run("danube-migrate", "--config", str(config))
    assert result.returncode == 2
    (refusal,) = log_lines(result)  # one JSON line, though no logging was configured
    assert (refusal["level"], refusal["process"]) == ("error", "danube-migrate")
    assert "busy_timeout" in result.stderr
    assert "unknown key" in result.stderr
    assert not (tmp_path / "danube.db").exists()


def test_a_missing_config_file_exits_2(tmp_path: Path):
    result = run("danube-migrate", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "config file not found" in result.stderr
