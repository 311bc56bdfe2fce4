"""Timestamps are stored as UTC and come back timezone-aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.repositories import NewJob
from danube_shared.db.schema import Job, Team
from danube_shared.db.timestamps import utcnow
from tests.support.postgres import sqlite_only

CEST = timezone(timedelta(hours=2))


def test_utcnow_is_timezone_aware_utc():
    now = utcnow()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


async def test_an_aware_datetime_comes_back_as_the_same_instant_in_utc(
    database: Database, job: NewJob
):
    started = datetime(2026, 5, 17, 12, 30, 15, 123456, tzinfo=CEST)
    await database.write(
        lambda session: session.execute(
            update(Job).where(Job.id == job.id).values(started_at=started)
        )
    )
    stored = await database.read(
        lambda session: session.scalar(select(Job.started_at).where(Job.id == job.id))
    )
    assert stored == started
    assert stored is not None
    assert stored.tzinfo is UTC
    assert stored.hour == 10


@sqlite_only("SQLite's text storage of timestamps")
async def test_sqlite_holds_the_utc_digits(database: Database, team: Team):
    def writes(session: Session) -> Any:
        session.execute(
            update(Team)
            .where(Team.id == team.id)
            .values(created_at=datetime(2026, 1, 1, 1, 0, tzinfo=CEST))
        )

    await database.write(writes)

    def reads(session: Session) -> Any:
        raw = session.scalar(text("SELECT created_at FROM teams WHERE id = :id"), {"id": team.id})
        return (raw,)

    (raw,) = await database.read(reads)
    assert raw == "2025-12-31 23:00:00.000000"


async def test_timestamps_sort_by_instant_across_offsets(database: Database, team: Team):
    earlier_in_utc = datetime(2026, 1, 1, 9, 0, tzinfo=CEST)  # 07:00 UTC
    later_in_utc = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)

    def writes(session: Session) -> Any:
        session.add(Team(name="later", created_at=later_in_utc))
        session.add(Team(name="earlier", created_at=earlier_in_utc))
        session.execute(update(Team).where(Team.id == team.id).values(created_at=utcnow()))

    await database.write(writes)
    names = await database.read(
        lambda session: (session.scalars(select(Team.name).order_by(Team.created_at))).all()
    )
    assert names == ["earlier", "later", "platform"]


async def test_a_naive_datetime_is_refused(database: Database, team: Team):
    def writes(session: Session) -> Any:
        session.execute(
            update(Team).where(Team.id == team.id).values(created_at=datetime(2026, 1, 1))  # noqa: DTZ001 -- the naive value under test
        )

    with pytest.raises(sa_exc.StatementError, match="naive datetime"):
        await database.write(writes)
