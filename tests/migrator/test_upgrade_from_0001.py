"""Migration 0002 on a database that already holds 0001's rows, and back down."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

from danube_migrator.alembic_setup import alembic_config
from danube_shared.config import DatabaseSettings
from danube_shared.db.schema import Base
from tests.support.postgres import sqlite_only

pytestmark = sqlite_only("seeds 0001's rows through sqlite3")

T0 = "2026-01-01 00:00:00.000000"


def execute(path: Path, *statements: str | tuple[str, tuple[object, ...]]) -> None:
    """Run each statement (SQL, or SQL and its parameters), then commit."""
    connection = sqlite3.connect(path)
    try:
        for statement in statements:
            sql, parameters = (statement, ()) if isinstance(statement, str) else statement
            connection.execute(sql, parameters)
        connection.commit()
    finally:
        connection.close()


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return alembic_config(database=DatabaseSettings(path=tmp_path / "danube.db"))


@pytest.fixture
def at_0001(tmp_path: Path, config: Config) -> Path:
    """A 0001 database with a user, a team, two pipelines (one with three jobs, numbered
    1, 2 and 5, one with none) and a step of each status 0001 knows."""
    path = tmp_path / "danube.db"
    command.upgrade(config, "0001")
    steps = json.dumps([{"name": "build", "command": "make"}, {"name": "test", "command": "t"}])
    execute(
        path,
        (
            (
                "INSERT INTO users (id, username, display_name, created_at) "
                "VALUES ('u1', 'ada', 'Ada', ?)"
            ),
            (T0,),
        ),
        ("INSERT INTO teams (id, name, created_at) VALUES ('t1', 'platform', ?)", (T0,)),
        *(
            (
                (
                    "INSERT INTO pipelines (id, team_id, name, steps, created_at, updated_at) "
                    "VALUES (?, 't1', ?, ?, ?, ?)"
                ),
                (pipeline_id, name, definitions, T0, T0),
            )
            for pipeline_id, name, definitions in (("p1", "build", steps), ("p2", "idle", "[]"))
        ),
        *(
            (
                (
                    "INSERT INTO jobs (id, pipeline_id, number, status, created_at) "
                    "VALUES (?, 'p1', ?, 'failed', ?)"
                ),
                (f"j{number}", number, T0),
            )
            for number in (1, 2, 5)
        ),
        "INSERT INTO steps (id, job_id, position, name, command, status) "
        "VALUES ('s0', 'j5', 0, 'build', 'make', 'failed')",
        "INSERT INTO steps (id, job_id, position, name, command, status) "
        "VALUES ('s1', 'j5', 1, 'test', 't', 'cancelled')",
    )
    return path


def test_the_upgrade_keeps_every_row_and_gives_the_new_columns_their_defaults(
    at_0001: Path, config: Config
):
    command.upgrade(config, "0002")
    assert query(at_0001, "SELECT username, is_admin FROM users") == [("ada", 0)]
    assert query(
        at_0001,
        "SELECT number, worker_id, node, cancel_requested, reason, claimed_at, last_seen_at "
        "FROM jobs ORDER BY number",
    ) == [(number, None, None, 0, None, None, None) for number in (1, 2, 5)]
    assert query(at_0001, "SELECT id, timeout_s, log_length FROM steps ORDER BY id") == [
        ("s0", 3600, 0),
        ("s1", 3600, 0),
    ]


def test_the_upgrade_numbers_each_pipelines_next_job_after_its_last(at_0001: Path, config: Config):
    command.upgrade(config, "0002")
    assert query(at_0001, "SELECT id, next_job_number FROM pipelines ORDER BY id") == [
        ("p1", 6),
        ("p2", 1),
    ]


def test_the_upgrade_gives_every_stored_step_definition_the_default_timeout(
    at_0001: Path, config: Config
):
    command.upgrade(config, "0002")
    [(steps,)] = query(at_0001, "SELECT steps FROM pipelines WHERE id = 'p1'")
    assert json.loads(str(steps)) == [
        {"name": "build", "command": "make", "timeout_s": 3600},
        {"name": "test", "command": "t", "timeout_s": 3600},
    ]


def test_the_downgrade_returns_the_rows_to_what_0001_knows(at_0001: Path, config: Config):
    """Step definitions lose `timeout_s`, a skipped step becomes cancelled, and the
    tables 0002 added are gone."""
    command.upgrade(config, "0002")
    execute(
        at_0001,
        "UPDATE steps SET status = 'skipped' WHERE id = 's1'",
        ("INSERT INTO workers (id, name, created_at) VALUES ('w1', 'node-a', ?)", (T0,)),
        "UPDATE jobs SET worker_id = 'w1' WHERE id = 'j5'",
    )
    command.downgrade(config, "0001")
    [(steps,)] = query(at_0001, "SELECT steps FROM pipelines WHERE id = 'p1'")
    assert json.loads(str(steps)) == [
        {"name": "build", "command": "make"},
        {"name": "test", "command": "t"},
    ]
    assert query(at_0001, "SELECT id, status FROM steps ORDER BY id") == [
        ("s0", "failed"),
        ("s1", "cancelled"),
    ]
    assert query(at_0001, "SELECT number FROM jobs ORDER BY number") == [(1,), (2,), (5,)]
    tables = {str(name) for (name,) in query(at_0001, "SELECT name FROM sqlite_master")}
    assert tables.isdisjoint({"workers", "api_tokens", "log_chunks"})


def test_the_migrated_check_constraints_are_exactly_the_models(tmp_path: Path, config: Config):
    """Alembic's drift check does not compare CHECK constraints; this does, by name and
    text, so a constraint added to the models and forgotten in a migration is caught."""
    command.upgrade(config, "head")
    engine = create_engine(f"sqlite:///{tmp_path / 'danube.db'}")
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            migrated = {
                (table, check["name"], " ".join(check["sqltext"].split()))
                for table in Base.metadata.tables
                for check in inspector.get_check_constraints(table)
            }
    finally:
        engine.dispose()
    models_engine = create_engine("sqlite://")
    try:
        Base.metadata.create_all(models_engine)
        with models_engine.connect() as connection:
            inspector = inspect(connection)
            modelled = {
                (table, check["name"], " ".join(check["sqltext"].split()))
                for table in Base.metadata.tables
                for check in inspector.get_check_constraints(table)
            }
    finally:
        models_engine.dispose()
    assert migrated == modelled
    assert ("jobs", "ck_jobs_status_not_skipped", "status <> 'skipped'") in migrated
