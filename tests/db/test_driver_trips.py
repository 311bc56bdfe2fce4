"""The engine's driver adapter: one trip to aiosqlite's thread per statement, none for a
deferred BEGIN or for ending no transaction, and results, row counts and errors as the
stock adapter gives them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text, update

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import JobRepository
from danube_shared.db.schema import Job, Pipeline, Status, Step, Team
from danube_shared.db.timestamps import utcnow


class Trips:
    """Every function sent to an aiosqlite worker thread while the fixture is active."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def clear(self) -> None:
        self.sent.clear()

    @property
    def count(self) -> int:
        return len(self.sent)


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Trips:
    seen = Trips()
    original = aiosqlite.Connection._execute  # pyright: ignore[reportPrivateUsage, reportUnknownMemberType, reportUnknownVariableType]

    async def counting(
        self: aiosqlite.Connection, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        seen.sent.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)  # pyright: ignore[reportUnknownVariableType]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return seen


async def test_a_write_takes_one_trip_per_statement_plus_begin_and_commit(
    database: Database, pipeline: Pipeline, trips: Trips
):
    """BEGIN IMMEDIATE, each statement, COMMIT: one trip each; returning the connection
    to the pool (its reset-on-return rollback) takes none."""
    async with database.write() as session:
        await session.execute(select(func.count()).select_from(Team))
        await session.execute(update(Pipeline).values(name="renamed"))
    assert trips.count == 4, trips.sent


async def test_a_read_sends_its_begin_with_its_first_statement(
    database: Database, pipeline: Pipeline, trips: Trips
):
    async with database.read() as session:
        await session.get(Pipeline, pipeline.id)
    # The SELECT (with BEGIN DEFERRED before it), then the ROLLBACK.
    assert trips.count == 2, trips.sent


async def test_a_job_creation_takes_five_trips(
    database: Database, pipeline: Pipeline, trips: Trips
):
    """BEGIN, the pipeline's steps with the next number, the job, its steps, COMMIT."""
    async with database.write() as session:
        await JobRepository(session).create(pipeline.id)
    assert trips.count == 5, trips.sent


async def test_getting_a_job_with_its_steps_is_one_statement(
    database: Database, job: Job, trips: Trips
):
    async with database.read() as session:
        loaded = await JobRepository(session).get(job.id)
    assert [step.position for step in loaded.steps] == list(range(len(job.steps)))
    # The SELECT (job joined to its steps, with BEGIN DEFERRED), then the ROLLBACK.
    assert trips.count == 2, trips.sent


async def test_a_transaction_left_open_on_the_driver_is_rolled_back_on_return(
    database: Database, migrated_db_path: Path
):
    """The pool's reset-on-return still reaches SQLite when a transaction is open, even
    one the driver began behind SQLAlchemy's back."""
    async with database.engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert isinstance(driver, aiosqlite.Connection)
        await driver.execute("BEGIN IMMEDIATE")
        assert driver.in_transaction
    assert not driver.in_transaction
    other = sqlite3.connect(migrated_db_path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock was released
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_rows_and_row_counts_come_back_with_the_statement(
    database: Database, pipeline: Pipeline
):
    now = utcnow()
    async with database.write() as session:
        job = await JobRepository(session).create(pipeline.id)
        await session.execute(
            insert(Step),
            [
                {
                    "id": new_id(),
                    "job_id": job.id,
                    "position": position,
                    "name": f"extra-{position}",
                    "command": "true",
                    "status": Status.PENDING,
                }
                for position in (10, 11)
            ],
        )
        changed = await session.execute(
            update(Step).where(Step.job_id == job.id).values(started_at=now)
        )
        assert changed.rowcount == len(pipeline.steps) + 2  # pyright: ignore[reportAttributeAccessIssue] -- a CursorResult
    async with database.read() as session:
        names = (
            await session.scalars(
                select(Step.name).where(Step.job_id == job.id).order_by(Step.position)
            )
        ).all()
    assert names == [step["name"] for step in pipeline.steps] + ["extra-10", "extra-11"]


async def test_a_failed_statement_is_a_dbapi_error_and_its_transaction_ends(
    database: Database,
):
    async with database.engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert isinstance(driver, aiosqlite.Connection)
        await connection.execute(text("SELECT 1"))
        assert driver.in_transaction  # the deferred BEGIN went with the SELECT
        with pytest.raises(sa_exc.OperationalError, match="no such table"):
            await connection.execute(text("SELECT * FROM no_such_table"))
    assert not driver.in_transaction
