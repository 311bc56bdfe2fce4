"""take_job_number: each pipeline's counter row, taken in the job's own transaction."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.job_numbers import TakenNumber, take_job_number
from danube_shared.db.repositories import PipelineRepository
from danube_shared.db.schema import Job, Pipeline, StepDefinition, Team
from danube_shared.db.timestamps import utcnow
from tests.db.conftest import STEPS


def create_job(session: Session, pipeline_id: str) -> int:
    """A bare job of the pipeline with the number taken for it, in one transaction."""
    taken = take_job_number(session.connection(), pipeline_id)
    assert taken is not None
    session.execute(
        insert(Job).values(
            id=new_id(), pipeline_id=pipeline_id, number=taken.number, created_at=utcnow()
        )
    )
    return taken.number


async def test_numbers_are_taken_in_order_with_the_pipelines_steps(
    database: Database, pipeline: Pipeline
):
    taken = [
        await database.write(lambda session: take_job_number(session.connection(), pipeline.id))
        for _ in range(3)
    ]
    assert [item.number if item else None for item in taken] == [1, 2, 3]
    assert taken[0] == TakenNumber(number=1, steps=(await stored_steps(database, pipeline)))


async def stored_steps(database: Database, pipeline: Pipeline) -> list[StepDefinition]:
    return await database.read(lambda session: list(session.get_one(Pipeline, pipeline.id).steps))


async def test_an_unknown_pipeline_takes_no_number(database: Database):
    taken = await database.write(lambda session: take_job_number(session.connection(), new_id()))
    assert taken is None


async def test_each_pipeline_counts_on_its_own(database: Database, team: Team, pipeline: Pipeline):
    other = await database.write(
        lambda session: PipelineRepository(session).create(team.id, name="deploy", steps=STEPS)
    )
    numbers = [
        await database.write(lambda session, p=p: create_job(session, p))
        for p in (pipeline.id, other.id, pipeline.id, other.id, pipeline.id)
    ]
    assert numbers == [1, 1, 2, 2, 3]


async def test_a_rolled_back_transaction_gives_its_number_back(
    database: Database, pipeline: Pipeline
):
    class Abandon(Exception):
        pass

    def take_then_fail(session: Session) -> None:
        create_job(session, pipeline.id)
        raise Abandon

    with pytest.raises(Abandon):
        await database.write(take_then_fail)
    assert await database.write(lambda session: create_job(session, pipeline.id)) == 1


async def test_concurrent_creations_from_two_engines_number_jobs_1_to_n(
    database_settings: DatabaseSettings, pipeline: Pipeline
):
    """Two `Database`s on one file stand for two nodes: 60 concurrent creations commit
    with numbers exactly 1..60, no conflict and no retry."""
    first, second = Database.open(database_settings), Database.open(database_settings)
    try:
        await asyncio.gather(
            *(
                db.write(lambda session: create_job(session, pipeline.id))
                for db in (first, second)
                for _ in range(30)
            )
        )
        numbers = await first.read(
            lambda session: session.scalars(
                select(Job.number).where(Job.pipeline_id == pipeline.id).order_by(Job.number)
            ).all(),
        )
        next_number = await first.read(
            lambda session: session.get_one(Pipeline, pipeline.id).next_job_number
        )
    finally:
        await first.dispose()
        await second.dispose()
    assert numbers == list(range(1, 61))
    assert next_number == 61


async def test_taking_a_number_leaves_the_pipelines_updated_at_alone(
    database: Database, pipeline: Pipeline
):
    """The counter is bookkeeping: a new job is not a change to the pipeline."""
    await database.write(lambda session: create_job(session, pipeline.id))
    stored = await database.read(lambda session: session.get_one(Pipeline, pipeline.id))
    assert (stored.next_job_number, stored.updated_at) == (2, pipeline.updated_at)
