"""The claim's statement shape (DESIGN 15): one `UPDATE ... WHERE id = (SELECT ... FOR
UPDATE SKIP LOCKED) RETURNING`, written once for both engines. SQLAlchemy leaves the
locking clause out on SQLite, where the single writer already serialises claims; on
PostgreSQL concurrent claimers skip each other's rows instead of waiting or doubling."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import JobRepository
from danube_shared.db.schema import Job, Pipeline, Status
from tests.support.postgres import postgresql_only

_JOBS = cast(Table, Job.__table__)
_OLDEST_PENDING = (
    select(_JOBS.c.id)
    .where(_JOBS.c.status == Status.PENDING)
    .order_by(_JOBS.c.created_at, _JOBS.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
CLAIM = (
    update(_JOBS)
    .where(_JOBS.c.id == _OLDEST_PENDING, _JOBS.c.status == Status.PENDING)
    .values(status=Status.RUNNING)
    .returning(_JOBS.c.id)
)


def claim(session: Session) -> Any:
    return session.execute(CLAIM).scalar_one_or_none()


def test_sqlite_gets_the_claim_without_a_locking_clause():
    assert "FOR UPDATE" not in str(CLAIM.compile(dialect=sqlite.dialect()))


async def test_claims_take_the_oldest_pending_job_once(database: Database, pipeline: Pipeline):
    created = [
        (await database.write(lambda session: JobRepository(session).create(pipeline.id))).id
        for _ in range(2)
    ]
    claimed = [await database.write(claim) for _ in range(3)]
    assert claimed == [*created, None]


@postgresql_only("row locks and SKIP LOCKED")
async def test_a_claim_skips_a_job_another_claim_holds(
    database_settings: DatabaseSettings, database: Database, pipeline: Pipeline
):
    """An uncommitted claim holds the oldest job; a concurrent one takes the next at once
    (a short lock timeout would turn waiting into an error)."""
    created = [
        (await database.write(lambda session: JobRepository(session).create(pipeline.id))).id
        for _ in range(2)
    ]
    impatient = Database.open(database_settings.model_copy(update={"busy_timeout_ms": 100}))
    try:
        async with database.engine.connect() as holder:
            held = (await holder.execute(CLAIM)).scalar_one()
            other = await impatient.write(claim)
            await holder.commit()
    finally:
        await impatient.dispose()
    assert [held, other] == created
