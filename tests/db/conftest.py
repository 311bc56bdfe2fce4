"""Rows most database tests start from (a team, its pipeline of three steps, a job), and
the database they live in: on PostgreSQL when `DANUBE_TEST_DATABASE_URL` is set (a fresh
copy of a migrated template database per test, see `tests/support/postgres.py`), else the
migrated SQLite copy of `tests/conftest.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import JobRepository, NewJob, PipelineRepository, TeamRepository
from danube_shared.db.schema import Pipeline, StepDefinition, Team
from tests.support.postgres import (
    empty_tables,
    postgresql_module_database,  # noqa: F401 -- a fixture, offered to this directory
    postgresql_template,  # noqa: F401 -- a fixture, offered to this directory
    postgresql_test_url,
)

STEPS: list[StepDefinition] = [
    {"name": "checkout", "command": "git clone https://example.invalid/repo.git ."},
    {"name": "test", "command": "make test", "timeout_s": 600},
    {"name": "package", "command": "make dist"},
]


@pytest.fixture
def database_settings(
    request: pytest.FixtureRequest, migrated_db_path: Path
) -> Iterator[DatabaseSettings]:
    """This test's own migrated database: a SQLite copy, or on PostgreSQL the module's
    database, emptied after the test."""
    if not postgresql_test_url():
        yield DatabaseSettings(path=migrated_db_path)
        return
    own: str = request.getfixturevalue("postgresql_module_database")
    try:
        yield DatabaseSettings(url=own)
    finally:
        empty_tables(own)


@pytest.fixture
async def team(database: Database) -> Team:
    return await database.write(lambda session: TeamRepository(session).create(name="platform"))


@pytest.fixture
async def pipeline(database: Database, team: Team) -> Pipeline:
    return await database.write(
        lambda session: PipelineRepository(session).create(team.id, name="build", steps=STEPS)
    )


@pytest.fixture
async def job(database: Database, pipeline: Pipeline) -> NewJob:
    return await database.write(lambda session: JobRepository(session).create(pipeline.id))
