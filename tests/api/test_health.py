"""`/healthz` answers while the process runs; `/readyz` only when it can serve."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from danube_api.app import create_app
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from tests.api.conftest import api_settings, assert_problem
from tests.api.fake_keyd import FakeKeyd
from tests.api.served_app import serve


async def test_healthz_answers_200(client: httpx.AsyncClient):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_healthz_answers_200_even_when_keyd_is_down(
    client: httpx.AsyncClient, fake_keyd: FakeKeyd
):
    fake_keyd.available = False
    assert (await client.get("/healthz")).status_code == 200


async def test_readyz_answers_200_when_the_schema_is_at_head_and_keyd_answers(
    client: httpx.AsyncClient,
):
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"schema": "ok", "keyd": "ok"}}


async def test_readyz_is_a_503_naming_keyd_when_keyd_is_down(
    client: httpx.AsyncClient, fake_keyd: FakeKeyd
):
    fake_keyd.available = False
    body = assert_problem(await client.get("/readyz"), 503)
    assert body["detail"].startswith("keyd: ")
    assert "schema" not in body["detail"]


async def test_readyz_is_a_503_naming_the_schema_when_the_database_is_not_migrated(
    tmp_path: Path,
):
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    settings = api_settings(DatabaseSettings(path=empty))
    database = Database.open(settings.database)
    app = create_app(settings, keyd=FakeKeyd(), database=database, keyd_watch_interval_s=None)
    try:
        async with serve(app) as client:
            body = assert_problem(await client.get("/readyz"), 503)
    finally:
        await database.dispose()
    assert body["detail"].startswith("schema: ")
    assert "danube migrate" in body["detail"]
    assert "keyd" not in body["detail"]
