"""The engine on PostgreSQL: isolation of reads and writes, bounded lock waits, failed
transactions that spoil nothing, unreachable servers, and cancelled writes."""

from __future__ import annotations

import asyncio
import traceback

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import TeamRepository
from danube_shared.db.schema import Team
from danube_shared.errors import DatabaseError
from tests.support.postgres import postgresql_only

pytestmark = postgresql_only("asyncpg engine behaviour")

# Far above any wait here: a hang, not slowness (the suite never fails on a timing).
HANG_GUARD_S = 30.0


def transaction_mode(session: Session) -> tuple[str, str]:
    return (
        str(session.scalar(text("SHOW transaction_isolation"))),
        str(session.scalar(text("SHOW transaction_read_only"))),
    )


async def test_a_read_is_one_read_only_snapshot_and_a_write_reads_committed(database: Database):
    """REPEATABLE READ keeps a read on one snapshot, as on SQLite; writes stay READ
    COMMITTED, so a row lock waited for is re-read instead of failing the transaction."""
    assert await database.read(transaction_mode) == ("repeatable read", "on")
    assert await database.write(transaction_mode) == ("read committed", "off")


async def test_a_row_locked_elsewhere_past_the_busy_timeout_is_a_database_error(
    database_settings: DatabaseSettings, team: Team
):
    db = Database.open(database_settings.model_copy(update={"busy_timeout_ms": 200}))
    try:
        async with db.engine.connect() as holder:
            await holder.execute(update(Team).where(Team.id == team.id).values(name="held"))
            with pytest.raises(DatabaseError, match="stayed locked by another transaction"):
                async with asyncio.timeout(HANG_GUARD_S):
                    await db.write(
                        lambda session: session.execute(
                            update(Team).where(Team.id == team.id).values(name="late")
                        )
                    )
            await holder.rollback()
        await db.write(
            lambda session: session.execute(
                update(Team).where(Team.id == team.id).values(name="later")
            )
        )
        assert await db.read(lambda session: session.scalar(select(Team.name))) == "later"
    finally:
        await db.dispose()


async def test_a_failed_transaction_is_rolled_back_and_its_connection_reused_clean(
    database_settings: DatabaseSettings,
):
    """One pooled connection: the unit after a failed one runs on it, in a new
    transaction, not in the aborted one."""
    db = Database.open(database_settings.model_copy(update={"pool_size": 1}))

    def add_then_fail(session: Session) -> None:
        TeamRepository(session).create(name="dropped")
        session.execute(text("SELECT 1 / 0"))

    try:
        with pytest.raises(DatabaseError, match="22012"):
            await db.write(add_then_fail)
        await db.write(lambda session: TeamRepository(session).create(name="kept"))
        names = await db.read(lambda session: list(session.scalars(select(Team.name))))
        assert names == ["kept"]
    finally:
        await db.dispose()


async def test_an_unreachable_server_is_a_database_error_without_the_password(
    tmp_path_factory: pytest.TempPathFactory,
):
    password = "pw-0b9e-never-shown"  # noqa: S105 -- a marker to look for, guards nothing
    socket_dir = tmp_path_factory.mktemp("no-server")
    settings = DatabaseSettings(
        url=f"postgresql+asyncpg://danube:{password}@/danube?host={socket_dir}",
        pool_timeout_s=2,
    )
    db = Database.open(settings)
    try:
        with pytest.raises(DatabaseError, match="cannot connect to database") as raised:
            await db.read(lambda session: session.execute(select(1)))
    finally:
        await db.dispose()
    assert ":***@" in raised.value.message
    assert password not in "".join(traceback.format_exception(raised.value))


async def test_a_write_cancelled_after_it_started_reports_its_commit_then_the_cancel(
    database: Database,
):
    """As with SQLite's writer thread: the caller learns what was written before the
    cancellation reaches it."""
    outcome: list[str] = []
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def add_slowly(session: Session) -> str:
        loop.call_soon_threadsafe(started.set)
        session.execute(text("SELECT pg_sleep(0.5)"))
        return TeamRepository(session).create(name="kept").name

    async def caller() -> None:
        outcome.append(await database.write(add_slowly))
        await asyncio.sleep(0)

    task = asyncio.create_task(caller())
    async with asyncio.timeout(HANG_GUARD_S):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["kept"]
    assert await database.read(lambda session: list(session.scalars(select(Team.name)))) == ["kept"]
