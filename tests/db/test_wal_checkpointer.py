"""The WAL of a SQLite database is checkpointed by its own thread, not by the writer's
commits (`danube_shared.db.wal_checkpointer`)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import LogRepository, NewJob
from tests.support.postgres import sqlite_only

# Far above any wait here: a hang, not slowness (the suite never fails on a timing).
HANG_GUARD_S = 10.0
CHUNK = 64 * 1024
APPENDS = 64  # 4 MiB: past SQLite's own auto-checkpoint threshold of 1000 pages


def _auto_checkpoint(session: Session) -> int:
    return int(session.connection().exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def _append(session: Session, job_id: str, offset: int, data: bytes) -> int:
    return LogRepository(session).append_at(job_id, 0, offset, data, max_bytes=2**30)


def _size(path: Path) -> int:
    # A plain function: one stat of a local file, not worth a thread in an async test.
    return path.stat().st_size


def _checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "danube-db-checkpoint"]


@sqlite_only("SQLite's WAL")
async def test_the_writers_commits_never_checkpoint(database: Database):
    assert await database.write(_auto_checkpoint) == 0


@sqlite_only("SQLite's WAL")
async def test_written_pages_reach_the_database_file_while_it_stays_open(
    database_settings: DatabaseSettings, job: NewJob
):
    path = Path(database_settings.path)
    before = _size(path)
    database = Database.open(database_settings)
    try:
        for n in range(APPENDS):
            await database.write(_append, job.id, n * CHUNK, os.urandom(CHUNK))
        deadline = asyncio.get_running_loop().time() + HANG_GUARD_S
        # Only a checkpoint copies the WAL's pages into the file; the writer never does.
        while _size(path) < before + APPENDS * CHUNK:
            assert asyncio.get_running_loop().time() < deadline, "no checkpoint copied the WAL"
            await asyncio.sleep(0.02)
    finally:
        await database.dispose()


@sqlite_only("SQLite's WAL")
async def test_dispose_stops_the_checkpointer_thread(
    database_settings: DatabaseSettings, job: NewJob
):
    others = set(_checkpointer_threads())
    database = Database.open(database_settings)
    await database.write(_append, job.id, 0, b"output")
    started = [thread for thread in _checkpointer_threads() if thread not in others]
    assert len(started) == 1
    await database.dispose()
    assert not started[0].is_alive()
