"""Fixtures of the API tests: the app on this test's migrated database (a SQLite copy, or
on PostgreSQL when `DANUBE_TEST_DATABASE_URL` is set, as in tests/db) with a fake keyd,
an httpx client on it (lifespan run as a server would) that sends a site admin's bearer
token by default, the other callers (`callers`: an owner, a maintainer and a member of
the `world` team, a user of another team, a worker), and small helpers that create the
objects most tests need."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI

from danube_api.app import create_app
from danube_api.keyd_sync import KeydSync
from danube_shared.config import DatabaseSettings, KeydSettings, LogSettings, Settings
from danube_shared.db.engine import Database
from danube_shared.db.token_issuing import (
    ADMIN_USERNAME,
    create_user_with_token,
    create_worker_with_token,
    issue_token_for_username,
)
from danube_shared.errors import Conflict
from danube_shared.logs import configure_logging
from tests.api.fake_keyd import FakeKeyd
from tests.api.served_app import serve, state_of
from tests.support.keyd import KeydHome, KeydProcess, kill_every, make_home, spawn, wait_ready
from tests.support.postgres import (
    empty_tables,
    postgresql_module_database,  # noqa: F401 -- a fixture, offered to this directory
    postgresql_template,  # noqa: F401 -- a fixture, offered to this directory
    postgresql_test_url,
)

PROBLEM = "application/problem+json"


def api_settings(
    database: DatabaseSettings, *, socket_dir: Path | None = None, **keyd: Any
) -> Settings:
    return Settings(
        database=database,
        keyd=KeydSettings(socket_dir=socket_dir or Path("/nonexistent/danube-test"), **keyd),
    )


@pytest.fixture
def database_settings(
    request: pytest.FixtureRequest, migrated_db_path: Path
) -> Iterator[DatabaseSettings]:
    """This test's own migrated database: a SQLite copy, or on PostgreSQL the module's
    database, emptied after the test."""
    if not postgresql_test_url():
        yield DatabaseSettings(path=migrated_db_path)
        return
    own: str = request.getfixturevalue("postgresql_module_database")
    try:
        # A generous wait for a pooled connection: tests that send hundreds of concurrent
        # writes must not fail on a busy machine's timing (a hang guard, not a bound).
        yield DatabaseSettings(url=own, pool_timeout_s=60)
    finally:
        empty_tables(own)


@pytest.fixture
def settings(database_settings: DatabaseSettings) -> Settings:
    return api_settings(database_settings, cache_ttl_s=600)


@pytest.fixture
def fake_keyd() -> FakeKeyd:
    return FakeKeyd()


@pytest.fixture
def app(settings: Settings, fake_keyd: FakeKeyd, database: Database) -> FastAPI:
    """The app with the fake keyd, the keyd watch off (tests drive it themselves)."""
    return create_app(settings, keyd=fake_keyd, database=database, keyd_watch_interval_s=None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class ApiCaller:
    """A user or worker made in the test database, with a token of it."""

    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


async def make_user(database: Database, username: str, *, is_admin: bool = False) -> ApiCaller:
    issued = await database.write(create_user_with_token, username, is_admin=is_admin)
    return ApiCaller(issued.user.id, issued.token)


async def make_worker(database: Database, name: str) -> ApiCaller:
    issued = await database.write(create_worker_with_token, name)
    return ApiCaller(issued.worker.id, issued.token)


async def admin_of(database: Database) -> ApiCaller:
    """The site admin `admin` (made if absent), with a new token."""
    try:
        return await make_user(database, ADMIN_USERNAME, is_admin=True)
    except Conflict:
        issued = await database.write(issue_token_for_username, ADMIN_USERNAME)
        return ApiCaller(issued.user.id, issued.token)


@asynccontextmanager
async def serve_as_admin(app: FastAPI, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """`serve(app)`, with the client sending a site admin's token on every request."""
    caller = await admin_of(database)
    async with serve(app) as client:
        client.headers.update(caller.headers)
        yield client


@pytest.fixture
async def admin(database: Database) -> ApiCaller:
    """The site admin whose token `client` sends."""
    return await admin_of(database)


@pytest.fixture
async def client(app: FastAPI, admin: ApiCaller) -> AsyncIterator[httpx.AsyncClient]:
    """The app served in-process; every request carries the site admin's token unless
    it sets its own `Authorization` header (see `send_without_token` for none)."""
    async with serve(app) as client:
        client.headers.update(admin.headers)
        yield client


async def send_without_token(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """The request with no `Authorization` header at all."""
    request = client.build_request(method, url, **kwargs)
    del request.headers["authorization"]
    return await client.send(request)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with `status`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert body["detail"]
    return body


@dataclass
class World:
    """A team with a pipeline of two steps, made through the API."""

    team_id: str
    pipeline_id: str


async def make_world(client: httpx.AsyncClient, tag: str = "a") -> World:
    team = await client.post("/api/v1/teams", json={"name": f"team-{tag}"})
    assert team.status_code == 201, team.text
    pipeline = await client.post(
        f"/api/v1/teams/{team.json()['id']}/pipelines",
        json={
            "name": f"build-{tag}",
            "steps": [
                {"name": "compile", "command": "make"},
                {"name": "test", "command": "make check"},
            ],
        },
    )
    assert pipeline.status_code == 201, pipeline.text
    return World(team_id=team.json()["id"], pipeline_id=pipeline.json()["id"])


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    return await make_world(client)


@dataclass(frozen=True)
class Callers:
    """Callers around the `world` team: one per role in it, a member of another team
    (`outsider`), a user of no team (`loner`) and a worker."""

    owner: ApiCaller
    maintainer: ApiCaller
    member: ApiCaller
    outsider: ApiCaller
    loner: ApiCaller
    worker: ApiCaller


async def join(client: httpx.AsyncClient, team_id: str, user_id: str, role: str) -> None:
    response = await client.put(f"/api/v1/teams/{team_id}/members/{user_id}", json={"role": role})
    assert response.status_code in (200, 201), response.text


@pytest.fixture
async def callers(client: httpx.AsyncClient, database: Database, world: World) -> Callers:
    made = {
        role: await make_user(database, f"user-{role}")
        for role in ("owner", "maintainer", "member", "outsider", "loner")
    }
    for role in ("owner", "maintainer", "member"):
        await join(client, world.team_id, made[role].id, role)
    other = await client.post("/api/v1/teams", json={"name": "team-other"})
    assert other.status_code == 201, other.text
    await join(client, other.json()["id"], made["outsider"].id, "owner")
    return Callers(**made, worker=await make_worker(database, "worker-1"))


async def new_job(client: httpx.AsyncClient, pipeline_id: str) -> dict[str, Any]:
    response = await client.post(f"/api/v1/pipelines/{pipeline_id}/jobs")
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def keyd_sync_of(client: httpx.AsyncClient) -> KeydSync:
    """The keeper of keyd's cache of the running app (the client must come from `serve`)."""
    keyd_sync = state_of(client)["keyd_sync"]
    assert isinstance(keyd_sync, KeydSync)
    return keyd_sync


class CapturedLogs:
    """Every line the process logs while the fixture is active, as written."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["message"] == "request"]


def reset_logging() -> None:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


@pytest.fixture
def captured_logs() -> Iterator[CapturedLogs]:
    """Logging configured as `danube-api` configures it by default (JSON, info), into memory."""
    stream = io.StringIO()
    configure_logging(LogSettings(), "danube-api", stream)
    yield CapturedLogs(stream)
    reset_logging()


# A real keyd: the second suite runs the API against a `danube-keyd` process.

REAL_KEYD_TIMEOUT_MS = 500


class KeydRunner:
    """Starts, freezes and kills real keyd processes in one home; every process it
    started is killed by pid at teardown."""

    def __init__(self, home: KeydHome) -> None:
        self.home = home
        self.processes: list[KeydProcess] = []

    @property
    def current(self) -> KeydProcess:
        return self.processes[-1]

    def start(self) -> KeydProcess:
        process = spawn(self.home)
        self.processes.append(process)
        wait_ready(process)
        return process

    def kill(self) -> None:
        self.current.kill()

    def freeze(self) -> None:
        os.kill(self.current.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.current.pid, signal.SIGCONT)

    def kill_all(self) -> None:
        """Kill every keyd this runner started, whatever happens to any one of them."""
        kill_every(self.processes)


@pytest.fixture
def keyd_runner() -> Iterator[KeydRunner]:
    """A real keyd, running, in a short home under /tmp."""
    runner = KeydRunner(make_home())
    try:
        runner.start()
        yield runner
    finally:
        runner.kill_all()
        shutil.rmtree(runner.home.root, ignore_errors=True)


@pytest.fixture
def real_settings(database_settings: DatabaseSettings, keyd_runner: KeydRunner) -> Settings:
    return api_settings(
        database_settings,
        socket_dir=keyd_runner.home.socket_dir,
        request_timeout_ms=REAL_KEYD_TIMEOUT_MS,
        cache_ttl_s=600,
    )


@pytest.fixture
async def real_client(
    real_settings: Settings, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the real keyd, with its own keyd client and the keyd watch every 0.1 s."""
    app = create_app(real_settings, database=database, keyd_watch_interval_s=0.1)
    async with serve_as_admin(app, database) as client:
        yield client
