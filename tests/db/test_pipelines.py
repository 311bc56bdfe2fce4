"""PipelineRepository."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import PipelineRepository, TeamRepository
from danube_shared.db.schema import STEP_TIMEOUT_DEFAULT_S, Pipeline, Team
from danube_shared.errors import Conflict, NotFound
from tests.db.conftest import STEPS


async def test_a_pipeline_keeps_its_steps_in_order(database: Database, pipeline: Pipeline):
    stored = await database.read(lambda session: PipelineRepository(session).get(pipeline.id))
    assert [step["name"] for step in stored.steps] == [step["name"] for step in STEPS]
    assert [step["command"] for step in stored.steps] == [step["command"] for step in STEPS]
    assert stored.created_at == stored.updated_at


async def test_a_step_keeps_its_timeout_and_one_without_gets_the_default(
    database: Database, pipeline: Pipeline
):
    stored = await database.read(lambda session: PipelineRepository(session).get(pipeline.id))
    assert [step.get("timeout_s") for step in stored.steps] == [
        STEP_TIMEOUT_DEFAULT_S,
        600,
        STEP_TIMEOUT_DEFAULT_S,
    ]


async def test_a_pipeline_of_an_unknown_team_is_not_found(database: Database):
    with pytest.raises(NotFound, match="team"):
        await database.write(
            lambda session: PipelineRepository(session).create(new_id(), name="build", steps=STEPS)
        )


async def test_a_pipeline_name_is_unique_within_its_team_only(
    database: Database, team: Team, pipeline: Pipeline
):
    with pytest.raises(Conflict, match="already has a pipeline named 'build'"):
        await database.write(
            lambda session: PipelineRepository(session).create(team.id, name="build", steps=STEPS)
        )

    def writes(session: Session) -> Any:
        other = TeamRepository(session).create(name="other")
        PipelineRepository(session).create(other.id, name="build", steps=STEPS)

    await database.write(writes)


async def test_a_teams_pipelines_are_listed_by_name(database: Database, team: Team):
    def writes(session: Session) -> Any:
        other = TeamRepository(session).create(name="other")
        pipelines = PipelineRepository(session)
        for name in ("release", "build", "lint"):
            pipelines.create(team.id, name=name, steps=STEPS)
        pipelines.create(other.id, name="theirs", steps=STEPS)

    await database.write(writes)
    listed = await database.read(
        lambda session: PipelineRepository(session).list_for_team(team.id, limit=2, offset=1)
    )
    assert [pipeline.name for pipeline in listed] == ["lint", "release"]


async def test_listing_the_pipelines_of_an_unknown_team_is_not_found(database: Database):
    with pytest.raises(NotFound):
        await database.read(lambda session: PipelineRepository(session).list_for_team(new_id()))


async def test_an_unknown_pipeline_is_not_found(database: Database):
    missing = new_id()
    with pytest.raises(NotFound, match=f"pipeline {missing} not found"):
        await database.read(lambda session: PipelineRepository(session).get(missing))
