"""Callers made straight in the test's database: a site admin and workers, each with an
API token, and a job claimed by a worker through the API. (The `client` fixture's own
token, when it has one, is left alone: these headers are passed explicitly.)"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.repositories.tokens import TokenRepository
from danube_shared.db.repositories.users import UserRepository
from danube_shared.db.repositories.workers import WorkerRepository
from danube_shared.tokens import TokenKind, new_token, token_sha256
from tests.api.served_app import state_of

Headers = dict[str, str]


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


def _admin(session: Session, username: str, token: str) -> None:
    user = UserRepository(session).create(username=username, display_name=username, is_admin=True)
    TokenRepository(session).create_for_user(user.id, name="test", token_sha256=token_sha256(token))


def _user(session: Session, username: str, token: str) -> str:
    user = UserRepository(session).create(username=username, display_name=username)
    TokenRepository(session).create_for_user(user.id, name="test", token_sha256=token_sha256(token))
    return user.id


def _worker(session: Session, name: str, token: str) -> str:
    worker = WorkerRepository(session).create(name=name)
    TokenRepository(session).create_for_worker(
        worker.id, name="test", token_sha256=token_sha256(token)
    )
    return worker.id


async def make_admin(database: Database, username: str = "root") -> Headers:
    token = new_token(TokenKind.USER)
    await database.write(_admin, username, token)
    return bearer(token)


async def make_user(database: Database, username: str) -> tuple[str, Headers]:
    """A plain user (no team, not an admin) and its headers."""
    token = new_token(TokenKind.USER)
    return await database.write(_user, username, token), bearer(token)


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    headers: Headers


async def make_worker(database: Database, name: str = "w1") -> WorkerIdentity:
    token = new_token(TokenKind.WORKER)
    worker_id = await database.write(_worker, name, token)
    return WorkerIdentity(worker_id, bearer(token))


@dataclass(frozen=True)
class ClaimedJob:
    job: dict[str, Any]
    token: str

    @property
    def id(self) -> str:
        return str(self.job["id"])


async def claim(client: httpx.AsyncClient, worker: WorkerIdentity, wait: int = 0) -> ClaimedJob:
    """Claim through the API; the claim must find a job."""
    response = await client.post(
        "/api/v1/worker/claim", params={"wait": wait}, headers=worker.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return ClaimedJob(job=body["job"], token=body["token"])


@dataclass(frozen=True)
class StartedJob:
    """A job created by a fresh admin and claimed by a fresh worker (what `POST .../start`
    used to give): its id, its token, and the headers of the admin and the worker."""

    id: str
    token: str
    admin: Headers
    worker: WorkerIdentity


async def start_job(client: httpx.AsyncClient, pipeline_id: str) -> StartedJob:
    """Create a job of the pipeline and claim it; there must be no older pending job.
    The client must come from `served_app.serve` (its database is the app's)."""
    database = state_of(client)["database"]
    assert isinstance(database, Database)
    tag = uuid.uuid4().hex[:12]
    admin = await make_admin(database, f"admin-{tag}")
    worker = await make_worker(database, f"worker-{tag}")
    created = await client.post(f"/api/v1/pipelines/{pipeline_id}/jobs", headers=admin)
    assert created.status_code == 201, created.text
    claimed = await claim(client, worker)
    assert claimed.id == created.json()["id"]
    return StartedJob(id=claimed.id, token=claimed.token, admin=admin, worker=worker)
