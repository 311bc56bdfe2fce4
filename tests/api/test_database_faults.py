"""A database that cannot serve a request answers a 503 problem saying why, in time, and
the API serves again once it can: nothing hangs, nothing answers 500."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from danube_api.app import create_app
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from tests.api.asgi_harness import serve
from tests.api.conftest import api_settings, assert_problem
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
        async with serve(app) as client:
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
        assert elapsed < BUSY_TIMEOUT_MS / 1000 + 1.0
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (
        await impatient_client.post("/api/v1/teams", json={"name": "blocked"})
    ).status_code == 201
    # Nothing of the refused write was kept.
    names = [team["name"] for team in (await impatient_client.get("/api/v1/teams")).json()["items"]]
    assert names == ["blocked"]
