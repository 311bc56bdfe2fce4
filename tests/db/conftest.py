"""Rows most database tests start from: a team, its pipeline of three steps, a job."""

from __future__ import annotations

import pytest

from danube_shared.db.engine import Database
from danube_shared.db.repositories import JobRepository, NewJob, PipelineRepository, TeamRepository
from danube_shared.db.schema import Pipeline, StepDefinition, Team

STEPS: list[StepDefinition] = [
    {"name": "checkout", "command": "git clone https://example.invalid/repo.git ."},
    {"name": "test", "command": "make test", "timeout_s": 600},
    {"name": "package", "command": "make dist"},
]


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
