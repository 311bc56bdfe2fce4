"""A database that cannot serve a request answers a 503 problem saying why, in time, and
the API serves again once it can: nothing hangs, nothing answers 500."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from danube_api.app import create_app, open_database
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from tests.api.conftest import api_settings, assert_problem, serve_as_admin
from tests.api.fake_keyd import FakeKeyd

BUSY_TIMEOUT_MS = 200


@pytest.fixture
async def impatient_client(migrated_db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = api_settings(
        DatabaseSettings(path=migrated_db_path, busy_timeout_ms=BUSY_TIMEOUT_MS)
    )
    database = Database.open(settings.database)
    app = create_app(settings, keyd=FakeKeyd(), database=database, keyd_watch_interval_s=None)
    try:
        async with serve_as_admin(app, database) as client:
            yield client
    finally:
        await database.dispose()


async def test_a_write_lock_held_elsewhere_is_a_503_within_the_busy_timeout_then_writes_work(
    impatient_client: httpx.AsyncClient, migrated_db_path: Path
):
    other = sqlite3.connect(migrated_db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        began = time.monotonic()
        response = await impatient_client.post("/api/v1/teams", json={"name": "blocked"})
        elapsed = time.monotonic() - began
        body = assert_problem(response, 503)
        assert "locked" in body["detail"]
        assert elapsed < 10 * BUSY_TIMEOUT_MS / 1000  # a hang guard, not a speed check
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (
        await impatient_client.post("/api/v1/teams", json={"name": "blocked"})
    ).status_code == 201
    # Nothing of the refused write was kept.
    names = [team["name"] for team in (await impatient_client.get("/api/v1/teams")).json()["items"]]
    assert names == ["blocked"]


REQUEST_TIMEOUT_MS = 300
# Ten times the bound: above it is a hang, not slowness (the suite never fails on a timing),
# and still far below the 60 s busy timeout the API must not wait out.
HANG_GUARD_S = 10 * REQUEST_TIMEOUT_MS / 1000


@pytest.fixture
async def bounded_app(
    migrated_db_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    """The app on the database the API opens itself: a long busy timeout, a short
    keyd.request_timeout_ms."""
    settings = api_settings(
        DatabaseSettings(path=migrated_db_path, busy_timeout_ms=60_000),
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    database = open_database(settings)
    app = create_app(settings, keyd=FakeKeyd(), database=database, keyd_watch_interval_s=None)
    try:
        async with serve_as_admin(app, database) as client:
            yield client, database
    finally:
        await database.dispose()


async def test_a_stuck_write_is_a_503_within_the_request_timeout_not_the_busy_timeout(
    bounded_app: tuple[httpx.AsyncClient, Database],
):
    client, database = bounded_app
    stuck = threading.Event()
    release = threading.Event()

    def stuck_write(_session: Session) -> None:
        stuck.set()
        release.wait(HANG_GUARD_S)

    holder = asyncio.create_task(database.write(stuck_write))
    try:
        await asyncio.to_thread(stuck.wait, HANG_GUARD_S)
        began = time.monotonic()
        response = await client.post("/api/v1/teams", json={"name": "queued"})
        elapsed = time.monotonic() - began
        body = assert_problem(response, 503)
        assert f"waited longer than {REQUEST_TIMEOUT_MS} ms" in body["detail"]
        assert elapsed < HANG_GUARD_S
    finally:
        release.set()
        await holder
    assert (await client.post("/api/v1/teams", json={"name": "queued"})).status_code == 201


async def test_a_lock_held_by_another_process_is_a_503_within_the_request_timeout(
    bounded_app: tuple[httpx.AsyncClient, Database], migrated_db_path: Path
):
    client, _ = bounded_app
    other = sqlite3.connect(migrated_db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        began = time.monotonic()
        response = await client.post("/api/v1/teams", json={"name": "blocked"})
        elapsed = time.monotonic() - began
        assert "locked" in assert_problem(response, 503)["detail"]
        assert elapsed < HANG_GUARD_S
    finally:
        other.execute("ROLLBACK")
        other.close()
