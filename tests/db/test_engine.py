"""The engine and its units of work: connection settings, transactions, typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.error_translation import translate_error
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import TeamRepository
from danube_shared.db.schema import Base, Pipeline, Secret, Team
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import (
    Conflict,
    DatabaseError,
    InvalidInput,
    NotFound,
    SchemaNotAtHead,
)
from tests.support.postgres import sqlite_only

# Far above any wait here: a hang, not slowness (the suite never fails on a timing).
HANG_GUARD_S = 10.0


async def pragmas(connection: AsyncConnection) -> dict[str, object]:
    values: dict[str, object] = {}
    for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"):
        values[name] = (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
    return values


@sqlite_only("per-connection PRAGMAs")
async def test_every_pooled_connection_gets_the_pragmas(database_settings: DatabaseSettings):
    db = Database.open(database_settings.model_copy(update={"busy_timeout_ms": 1234}))
    try:
        async with db.engine.connect() as first, db.engine.connect() as second:
            first_raw = await first.get_raw_connection()
            second_raw = await second.get_raw_connection()
            assert first_raw.dbapi_connection is not second_raw.dbapi_connection
            expected = {
                "journal_mode": "wal",
                "synchronous": 1,
                "foreign_keys": 1,
                "busy_timeout": 1234,
            }
            assert await pragmas(first) == expected
            assert await pragmas(second) == expected
    finally:
        await db.dispose()


async def test_foreign_keys_are_enforced_on_a_second_connection(database: Database):
    async with database.engine.connect() as first, database.engine.connect() as second:
        await first.execute(select(1))  # the pool's first connection stays checked out
        with pytest.raises(sa_exc.IntegrityError, match=r"(?i)foreign key"):
            await second.execute(
                insert(Pipeline).values(
                    id=new_id(),
                    team_id=new_id(),
                    name="orphan",
                    steps=[],
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )


def count_teams(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Team)) or 0


@sqlite_only("per-connection PRAGMAs")
async def test_the_writer_connection_gets_the_pragmas(database_settings: DatabaseSettings):
    db = Database.open(database_settings.model_copy(update={"busy_timeout_ms": 1234}))

    def writer_pragmas(session: Session) -> dict[str, object]:
        connection = session.connection()
        return {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }

    try:
        assert await db.write(writer_pragmas) == {
            "journal_mode": "wal",
            "synchronous": 1,
            "foreign_keys": 1,
            "busy_timeout": 1234,
        }
    finally:
        await db.dispose()


async def test_a_write_commits_when_its_unit_returns(database: Database):
    await database.write(lambda session: session.add(Team(name="kept")))
    assert await database.read(lambda session: session.scalar(select(Team.name))) == "kept"


async def test_a_write_rolls_back_when_its_unit_raises(database: Database):
    def add_then_fail(session: Session) -> None:
        session.add(Team(name="dropped"))
        session.flush()
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await database.write(add_then_fail)
    assert await database.read(count_teams) == 0


@sqlite_only("BEGIN IMMEDIATE")
async def test_a_write_holds_the_write_lock_from_its_start(
    database: Database, migrated_db_path: Path
):
    """BEGIN IMMEDIATE: another writer is shut out before the unit runs any statement."""
    other = sqlite3.connect(
        migrated_db_path, timeout=0, isolation_level=None, check_same_thread=False
    )

    def try_to_write_elsewhere(_session: Session) -> str:
        with pytest.raises(sqlite3.OperationalError, match="locked") as refused:
            other.execute("BEGIN IMMEDIATE")
        return str(refused.value)

    try:
        assert "locked" in await database.write(try_to_write_elsewhere)
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_objects_stay_usable_after_the_commit(database: Database):
    team = await database.write(lambda session: TeamRepository(session).create(name="loaded"))
    assert team.name == "loaded"  # expire_on_commit is off: no lazy load after the unit
    assert team.created_at.tzinfo is not None


async def test_a_read_refuses_to_write(database: Database):
    def add_in_a_read(session: Session) -> None:
        session.add(Team(name="sneaky"))
        session.flush()

    with pytest.raises(RuntimeError, match="cannot write"):
        await database.read(add_in_a_read)
    assert await database.read(count_teams) == 0


@sqlite_only(
    "a second connection through sqlite3 (test_postgresql_engine checks the isolation level)"
)
async def test_a_read_sees_one_snapshot(database: Database, migrated_db_path: Path):
    def count_around_a_commit_elsewhere(session: Session) -> tuple[int, int]:
        before = count_teams(session)
        other = sqlite3.connect(migrated_db_path, isolation_level=None)
        try:
            other.execute(
                "INSERT INTO teams (id, name, created_at) VALUES (?, 'meanwhile', ?)",
                (new_id(), "2026-01-01 00:00:00.000000"),
            )
        finally:
            other.close()
        return before, count_teams(session)

    before, during = await database.read(count_around_a_commit_elsewhere)
    after = await database.read(count_teams)
    assert (before, during, after) == (0, 0, 1)


@sqlite_only("the writer thread (its unit blocks a thread, not the event loop)")
async def test_reads_do_not_wait_for_the_writer(database: Database, team: Team):
    flushed = threading.Event()
    release = threading.Event()

    def add_and_hold(session: Session) -> None:
        session.add(Team(name="uncommitted"))
        session.flush()
        flushed.set()
        release.wait(HANG_GUARD_S)

    writing = asyncio.create_task(database.write(add_and_hold))
    try:
        assert await asyncio.to_thread(flushed.wait, HANG_GUARD_S)
        async with asyncio.timeout(HANG_GUARD_S):
            names = await database.read(lambda session: session.scalars(select(Team.name)).all())
    finally:
        release.set()
        await writing
    assert names == ["platform"]


@sqlite_only("the database file and its permissions")
async def test_a_missing_database_file_says_to_run_migrate(tmp_path: Path):
    db = Database.open(DatabaseSettings(path=tmp_path / "absent.db"))
    try:
        with pytest.raises(DatabaseError, match="danube migrate") as raised:
            await db.read(lambda session: session.execute(select(1)))
        assert str(tmp_path / "absent.db") in str(raised.value)
    finally:
        await db.dispose()
    assert not (tmp_path / "absent.db").exists()


@sqlite_only("the database file and its permissions")
@pytest.mark.parametrize("create", [False, True])
async def test_a_path_that_is_a_directory_is_a_database_error(tmp_path: Path, create: bool):
    db = Database.open(DatabaseSettings(path=tmp_path), create=create)
    try:
        with pytest.raises(DatabaseError, match="is not a regular file"):
            await _select_one(db)
    finally:
        await db.dispose()


@sqlite_only("the database file and its permissions")
async def test_a_database_in_a_missing_directory_is_not_created(tmp_path: Path):
    db = Database.open(DatabaseSettings(path=tmp_path / "absent" / "danube.db"), create=True)
    try:
        with pytest.raises(DatabaseError, match="its directory does not exist"):
            await _select_one(db)
    finally:
        await db.dispose()


async def _select_one(db: Database) -> None:
    await db.read(lambda session: session.execute(select(1)))


@sqlite_only("the database file and its permissions")
async def test_a_database_without_the_schema_says_to_run_migrate(tmp_path: Path):
    db = Database.open(DatabaseSettings(path=tmp_path / "empty.db"), create=True)
    try:
        with pytest.raises(SchemaNotAtHead, match=r"no such table: teams.*danube migrate"):
            await db.read(lambda session: session.execute(select(Team)))
    finally:
        await db.dispose()


@sqlite_only(
    "SQLite locking, PRAGMAs and in-memory databases (test_postgresql_engine has the PostgreSQL cases)"
)
async def test_a_write_locked_past_the_busy_timeout_is_a_database_error(
    migrated_db_path: Path,
):
    db = Database.open(DatabaseSettings(path=migrated_db_path, busy_timeout_ms=100))
    holder = sqlite3.connect(migrated_db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseError, match="locked by another writer"):
            async with asyncio.timeout(HANG_GUARD_S):
                await db.write(lambda session: session.add(Team(name="late")))
    finally:
        holder.close()
        await db.dispose()


@sqlite_only("the writer thread (its unit blocks a thread, not the event loop)")
async def test_a_writer_queued_past_the_wait_bound_is_a_database_error_and_never_runs(
    migrated_db_path: Path,
):
    db = Database.open(DatabaseSettings(path=migrated_db_path, busy_timeout_ms=100))
    started = threading.Event()
    release = threading.Event()

    def hold(_session: Session) -> None:
        started.set()
        release.wait(HANG_GUARD_S)

    holder = asyncio.create_task(db.write(hold))
    try:
        assert await asyncio.to_thread(started.wait, HANG_GUARD_S)
        with pytest.raises(DatabaseError, match="waited longer than 100 ms"):
            await db.write(lambda session: session.add(Team(name="queued")))
    finally:
        release.set()
        await holder
    assert await db.read(count_teams) == 0
    await db.dispose()


@sqlite_only(
    "SQLite locking, PRAGMAs and in-memory databases (test_postgresql_engine has the PostgreSQL cases)"
)
async def test_after_a_failed_write_the_next_write_gets_a_fresh_connection(database: Database):
    """A unit that broke its connection (here: made it read-only) spoils no later unit."""

    def write_on_a_read_only_connection(session: Session) -> None:
        session.execute(text("PRAGMA query_only = ON"))
        session.add(Team(name="refused"))

    with pytest.raises(DatabaseError, match="is read-only"):
        await database.write(write_on_a_read_only_connection)
    await database.write(lambda session: session.add(Team(name="accepted")))
    assert await database.read(count_teams) == 1


@sqlite_only("the database file and its permissions")
def test_a_read_only_file_is_reported_with_the_fix(migrated_db_path: Path):
    readonly = sqlite3.connect(f"file:{migrated_db_path}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as raised:
            readonly.execute("INSERT INTO teams VALUES ('x', 'y', '2026-01-01 00:00:00')")
    finally:
        readonly.close()
    error = translate_error(raised.value, str(migrated_db_path))
    assert isinstance(error, DatabaseError)
    assert "read-only" in error.message
    assert "writable" in error.message


@sqlite_only(
    "SQLite locking, PRAGMAs and in-memory databases (test_postgresql_engine has the PostgreSQL cases)"
)
async def test_a_full_disk_is_a_database_error_and_nothing_is_written(database: Database):
    def write_more_than_fits(session: Session) -> None:
        # SQLite's own size limit fails a write exactly as a full disk does.
        pages = session.scalar(text("PRAGMA page_count"))
        session.execute(text(f"PRAGMA max_page_count = {pages}"))
        session.add_all(Team(name=f"team-{i:04d}-{'x' * 90}") for i in range(2000))

    with pytest.raises(DatabaseError, match="full"):
        await database.write(write_more_than_fits)
    assert await database.read(count_teams) == 0


@sqlite_only("the database file and its permissions")
def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path):
    path = tmp_path / "danube.db"
    path.write_bytes(b"this is not an SQLite file" * 100)
    connection = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError) as raised:
            connection.execute("SELECT * FROM sqlite_master")
    finally:
        connection.close()
    error = translate_error(raised.value, str(path))
    assert isinstance(error, DatabaseError)
    assert "not a Danube database" in error.message


async def test_constraint_failures_map_to_domain_errors(database: Database, team: Team):
    with pytest.raises(Conflict):
        await database.write(
            lambda session: session.execute(
                insert(Team).values(id=new_id(), name="platform", created_at=utcnow())
            )
        )
    with pytest.raises(NotFound):
        await database.write(
            lambda session: session.execute(
                insert(Pipeline).values(
                    id=new_id(),
                    team_id=new_id(),
                    name="x",
                    steps=[],
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
        )
    # The constraint's name, whatever the engine's wording around it.
    with pytest.raises(InvalidInput, match="ck_secrets_one_scope"):
        await database.write(
            lambda session: session.execute(
                insert(Secret).values(
                    id=new_id(),
                    name="no scope",
                    team_id=None,
                    pipeline_id=None,
                    ciphertext=b"c",
                    key_id=b"kid!",
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
        )


async def test_no_stored_value_appears_in_a_database_error(database: Database, team: Team):
    marker = b"CIPHERTEXT-MARKER-4f1c"
    values = {
        "team_id": team.id,
        "name": "dup",
        "key_id": b"kid!",
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }
    await database.write(
        lambda session: session.execute(
            insert(Secret).values(id=new_id(), ciphertext=b"first", **values)
        )
    )
    with pytest.raises(Conflict) as raised:
        await database.write(
            lambda session: session.execute(
                insert(Secret).values(id=new_id(), ciphertext=marker, **values)
            )
        )
    rendered = "".join(traceback.format_exception(raised.value))
    assert "unique" in rendered.lower()
    assert marker.decode() not in rendered
    assert repr(marker) not in rendered


@sqlite_only(
    "SQLite locking, PRAGMAs and in-memory databases (test_postgresql_engine has the PostgreSQL cases)"
)
async def test_an_in_memory_database_works_for_unit_tests():
    db = Database.open(DatabaseSettings(path=Path(":memory:")))
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)

        async def add(name: str) -> None:
            await db.write(lambda session: TeamRepository(session).create(name=name))

        async def count() -> int:
            return await db.read(count_teams)

        await asyncio.gather(*(add(f"team-{i}") for i in range(10)), *(count() for _ in range(10)))
        assert await count() == 10
    finally:
        await db.dispose()


@sqlite_only("the writer thread (its unit blocks a thread, not the event loop)")
async def test_a_write_cancelled_while_queued_never_runs(database: Database):
    started = threading.Event()
    release = threading.Event()

    def hold(_session: Session) -> None:
        started.set()
        release.wait(HANG_GUARD_S)

    holder = asyncio.create_task(database.write(hold))
    try:
        assert await asyncio.to_thread(started.wait, HANG_GUARD_S)
        queued = asyncio.create_task(
            database.write(lambda session: session.add(Team(name="never")))
        )
        await asyncio.sleep(0.01)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
    finally:
        release.set()
        await holder
    assert await database.read(count_teams) == 0


@sqlite_only("the writer thread (its unit blocks a thread, not the event loop)")
async def test_a_write_cancelled_after_it_started_reports_its_commit_then_the_cancel(
    database: Database,
):
    """The caller learns what was written before the cancellation reaches it, so it never
    acts (say, drops keyd's cache) on a write it believes undone."""
    started = threading.Event()
    release = threading.Event()
    outcome: list[str] = []

    def add_after_release(session: Session) -> str:
        started.set()
        release.wait(HANG_GUARD_S)
        return TeamRepository(session).create(name="kept").name

    async def caller() -> None:
        outcome.append(await database.write(add_after_release))
        await asyncio.sleep(0)

    task = asyncio.create_task(caller())
    assert await asyncio.to_thread(started.wait, HANG_GUARD_S)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["kept"]
    assert await database.read(count_teams) == 1


@sqlite_only("the writer thread (its unit blocks a thread, not the event loop)")
async def test_a_caller_cancelled_at_any_point_knows_whether_its_write_committed(
    database: Database,
):
    """Cancelled while queued, while its unit runs, or after the outcome reached the loop
    but before the caller resumed: a caller that was not told of a commit finds none
    stored, and one whose write committed was told so before the cancellation."""
    told: set[str] = set()

    for attempt in range(80):
        name = f"team-{attempt}"
        finished = threading.Event()

        def add(session: Session, name: str = name, finished: threading.Event = finished) -> str:
            created = TeamRepository(session).create(name=name).name
            finished.set()
            return created

        async def caller(add: Callable[[Session], str] = add) -> None:
            told.add(await database.write(add))
            await asyncio.sleep(0)

        task = asyncio.create_task(caller())
        if attempt % 5 == 0:
            await asyncio.sleep(0)  # cancelled while queued, or just started
        else:
            # Once the unit is done, its outcome reaches the loop within a few turns: a
            # cancellation 0 to 3 turns later lands before it, between it and the
            # caller's resumption, or after.
            deadline = time.monotonic() + HANG_GUARD_S
            while not finished.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110 -- turn by turn on purpose: the turns counted are the point
                await asyncio.sleep(0)
            for _ in range(attempt % 4):
                await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stored = set(
        await database.read(lambda session: list(session.scalars(select(Team.name)).all()))
    )
    assert stored == told
