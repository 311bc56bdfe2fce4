"""Claim wake-ups: in-process on both engines; on PostgreSQL, NOTIFY from a create-job
unit of work wakes the listeners of every node, and a listener whose connection breaks
listens again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.job_notifications import (
    LISTENER_APPLICATION_NAME,
    JobWakeups,
    job_wakeups,
    notify_job_created,
)
from danube_shared.db.repositories import JobRepository, NewJob
from danube_shared.db.schema import Pipeline
from tests.support.postgres import postgresql_only

# Far above any wait here: a hang, not slowness (the suite never fails on a timing).
HANG_GUARD_S = 30.0


def create_job(session: Session, pipeline_id: str) -> NewJob:
    """The create-job unit of work as the API runs it."""
    job = JobRepository(session).create(pipeline_id)
    notify_job_created(session.connection())
    return job


async def test_a_job_created_in_process_wakes_every_waiting_claim(database: Database):
    wakeups = job_wakeups(database)
    waiting = [asyncio.create_task(wakeups.wait(HANG_GUARD_S)) for _ in range(3)]
    await asyncio.sleep(0)  # let them wait
    wakeups.job_created()
    assert await asyncio.gather(*waiting) == [True, True, True]


async def test_a_claim_not_woken_returns_at_its_timeout():
    """The polling fallback: the wait is bounded even if no wake-up ever comes."""
    assert await JobWakeups().wait(0.01) is False


@pytest.fixture
async def other_node(database_settings: DatabaseSettings) -> AsyncIterator[Database]:
    """A second `Database` on the same database: another node's API."""
    db = Database.open(database_settings)
    yield db
    await db.dispose()


@pytest.fixture
async def listening(other_node: Database) -> AsyncIterator[JobWakeups]:
    """The other node's wake-ups, listening."""
    wakeups = job_wakeups(other_node)
    await wakeups.start()
    yield wakeups
    await wakeups.stop()


@postgresql_only("NOTIFY reaches the other nodes")
async def test_a_job_created_on_one_node_wakes_the_claims_of_another(
    database: Database, pipeline: Pipeline, listening: JobWakeups
):
    waiting = asyncio.create_task(listening.wait(HANG_GUARD_S))
    await asyncio.sleep(0)
    await database.write(create_job, pipeline.id)
    assert await waiting is True


@postgresql_only("the listener's own connection")
async def test_a_listener_whose_connection_breaks_listens_again(
    database: Database, pipeline: Pipeline, listening: JobWakeups
):
    reconnected = asyncio.create_task(listening.wait(HANG_GUARD_S))
    await asyncio.sleep(0)
    terminated = await database.read(
        lambda session: session.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": LISTENER_APPLICATION_NAME},
        )
    )
    assert terminated == 1
    assert await reconnected is True  # listening again wakes, for what it may have missed
    waiting = asyncio.create_task(listening.wait(HANG_GUARD_S))
    await asyncio.sleep(0)
    await database.write(create_job, pipeline.id)
    assert await waiting is True
