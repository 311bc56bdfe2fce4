"""Fixtures of the web page's view tests: the app on this test's migrated database with a
fake keyd, served in-process, and a world of users, tokens, teams and pipelines made with
the real repositories (the JSON routes' permissions are another suite's subject)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session

from danube_api.app import create_app
from danube_shared.config import DatabaseSettings, KeydSettings, Settings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import (
    PipelineRepository,
    TeamRepository,
    TokenRepository,
    UserRepository,
    WorkerRepository,
)
from danube_shared.db.schema import StepDefinition, TeamRole
from danube_shared.tokens import TokenKind, new_token, token_sha256
from tests.api.fake_keyd import FakeKeyd
from tests.api.served_app import serve

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def fake_keyd() -> FakeKeyd:
    return FakeKeyd()


@pytest.fixture
def app(database_settings: DatabaseSettings, fake_keyd: FakeKeyd, database: Database) -> FastAPI:
    settings = Settings(
        database=database_settings,
        keyd=KeydSettings(socket_dir=Path("/nonexistent/danube-test"), cache_ttl_s=600),
    )
    return create_app(settings, keyd=fake_keyd, database=database, keyd_watch_interval_s=None)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        yield client


@dataclass
class Person:
    user_id: str
    username: str
    token: str


@dataclass
class World:
    """Team `red` (owner, maintainer, member) with pipeline `build`; team `blue` with
    pipeline `deploy` and its own member; a site admin in no team; a worker's token."""

    admin: Person
    owner: Person
    maintainer: Person
    member: Person
    outsider: Person
    worker_token: str
    red_id: str
    blue_id: str
    build_id: str
    deploy_id: str


STEPS: list[StepDefinition] = [
    {"name": "compile", "command": "make"},
    {"name": "test", "command": "make check"},
]


def _person(session: Session, username: str, *, is_admin: bool = False) -> Person:
    user = UserRepository(session).create(
        username=username, display_name=username.title(), is_admin=is_admin
    )
    token = new_token(TokenKind.USER)
    TokenRepository(session).create_for_user(user.id, name="web", token_sha256=token_sha256(token))
    return Person(user.id, username, token)


def _world(session: Session) -> World:
    admin = _person(session, "root", is_admin=True)
    owner = _person(session, "olga")
    maintainer = _person(session, "mia")
    member = _person(session, "max")
    outsider = _person(session, "bob")
    teams = TeamRepository(session)
    red = teams.create(name="red")
    blue = teams.create(name="blue")
    teams.put_member(red.id, owner.user_id, TeamRole.OWNER)
    teams.put_member(red.id, maintainer.user_id, TeamRole.MAINTAINER)
    teams.put_member(red.id, member.user_id, TeamRole.MEMBER)
    teams.put_member(blue.id, outsider.user_id, TeamRole.OWNER)
    pipelines = PipelineRepository(session)
    build = pipelines.create(red.id, name="build", steps=STEPS)
    deploy = pipelines.create(blue.id, name="deploy", steps=STEPS)
    worker = WorkerRepository(session).create(name="runner-1")
    worker_token = new_token(TokenKind.WORKER)
    TokenRepository(session).create_for_worker(
        worker.id, name="w", token_sha256=token_sha256(worker_token)
    )
    return World(
        admin,
        owner,
        maintainer,
        member,
        outsider,
        worker_token,
        red.id,
        blue.id,
        build.id,
        deploy.id,
    )


@pytest.fixture
async def world(database: Database) -> World:
    return await database.write(_world)


def csrf_of(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found is not None, html
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, token: str) -> str:
    """Sign in through the form as a browser does (as a new visitor: the client's cookies
    are dropped first); returns the session's CSRF token."""
    client.cookies.clear()
    form = await client.get("/")
    assert form.status_code == 200, form.text
    response = await client.post(
        "/sign-in", data={"token": token, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 303, response.text
    home = await client.get("/")
    assert home.status_code == 200
    return csrf_of(home.text)
