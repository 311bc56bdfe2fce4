"""The claim: the oldest pending job, exactly once, running for the claiming worker with
its secrets in keyd; 204 when none comes within `wait`."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
from sqlalchemy import select
from starlette.requests import Request

from danube_api.routes.worker import HungUp
from danube_shared.db.engine import Database
from danube_shared.db.schema import Job
from tests.api.callers import Headers, WorkerIdentity, claim, make_admin, make_worker
from tests.api.conftest import World, assert_problem, make_world
from tests.api.fake_keyd import FakeKeyd
from tests.support.postgres import ON_POSTGRESQL

# Only catches a hang: a long poll that did not wake when the job came.
HANG_GUARD_S = 30


@pytest.fixture
async def admin_headers(database: Database) -> Headers:
    return await make_admin(database)


@pytest.fixture
async def worker(database: Database) -> WorkerIdentity:
    return await make_worker(database)


async def create(client: httpx.AsyncClient, pipeline_id: str, admin_headers: Headers) -> str:
    response = await client.post(f"/api/v1/pipelines/{pipeline_id}/jobs", headers=admin_headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_claim_with_no_pending_job_is_a_204(
    client: httpx.AsyncClient, worker: WorkerIdentity
):
    response = await client.post("/api/v1/worker/claim", headers=worker.headers)
    assert response.status_code == 204
    assert response.content == b""


async def test_a_claim_returns_the_job_running_for_the_worker_with_a_job_token(
    *,
    client: httpx.AsyncClient,
    world: World,
    admin_headers: Headers,
    worker: WorkerIdentity,
    fake_keyd: FakeKeyd,
    database: Database,
):
    job_id = await create(client, world.pipeline_id, admin_headers)
    claimed = await claim(client, worker)
    assert claimed.id == job_id
    assert claimed.job["status"] == "running"
    assert claimed.job["worker_id"] == worker.worker_id
    assert claimed.job["node"]
    assert claimed.job["started_at"] is not None
    assert claimed.token.startswith("dnb_j_")
    cached = fake_keyd.jobs[job_id]
    assert cached.token_sha256 == hashlib.sha256(claimed.token.encode()).digest()
    stored = await database.read(lambda session: session.get_one(Job, job_id))
    assert stored.token_sha256 == cached.token_sha256
    assert stored.claimed_at is not None
    assert stored.last_seen_at is not None


async def test_a_claimed_job_gets_team_secrets_overridden_by_pipeline_secrets(
    client: httpx.AsyncClient,
    world: World,
    admin_headers: Headers,
    worker: WorkerIdentity,
    fake_keyd: FakeKeyd,
):
    for url, value in (
        (f"/api/v1/teams/{world.team_id}/secrets/SHARED", "team"),
        (f"/api/v1/teams/{world.team_id}/secrets/TEAM_ONLY", "t"),
        (f"/api/v1/pipelines/{world.pipeline_id}/secrets/SHARED", "pipe"),
    ):
        assert (
            await client.put(url, json={"value": value}, headers=admin_headers)
        ).status_code < 300
    await create(client, world.pipeline_id, admin_headers)
    claimed = await claim(client, worker)
    assert fake_keyd.job_secrets(claimed.id, claimed.token) == {
        "SHARED": b"pipe",
        "TEAM_ONLY": b"t",
    }


async def test_a_claim_waits_and_returns_as_soon_as_a_job_is_created(
    client: httpx.AsyncClient, world: World, admin_headers: Headers, worker: WorkerIdentity
):
    waiting = asyncio.create_task(
        client.post("/api/v1/worker/claim", params={"wait": 60}, headers=worker.headers)
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    job_id = await create(client, world.pipeline_id, admin_headers)
    response = await asyncio.wait_for(waiting, HANG_GUARD_S)
    assert response.status_code == 200
    assert response.json()["job"]["id"] == job_id


async def test_fifty_concurrent_claimers_take_twenty_jobs_each_once_oldest_first(
    client: httpx.AsyncClient, admin_headers: Headers, database: Database
):
    world = await make_world(client, "many")
    created = [await create(client, world.pipeline_id, admin_headers) for _ in range(20)]
    workers = [await make_worker(database, f"w{n}") for n in range(50)]

    async def claim_once(worker: WorkerIdentity) -> tuple[str, float] | None:
        response = await client.post("/api/v1/worker/claim", headers=worker.headers)
        if response.status_code == 204:
            return None
        assert response.status_code == 200, response.text
        return response.json()["job"]["id"], asyncio.get_running_loop().time()

    results = await asyncio.gather(*(claim_once(worker) for worker in workers))
    taken = [result[0] for result in results if result is not None]
    assert sorted(taken) == sorted(created)
    assert len(set(taken)) == 20
    if ON_POSTGRESQL:
        # Concurrent claims commit side by side there (SKIP LOCKED): each takes the oldest
        # job not locked, but their claim times need not follow the jobs' order.
        return
    claimed_order = await database.read(
        lambda session: list(session.scalars(select(Job.id).order_by(Job.claimed_at, Job.id)))
    )
    assert claimed_order == created


async def test_keyd_unavailable_puts_the_claimed_job_back_to_pending_with_a_503(
    *,
    client: httpx.AsyncClient,
    world: World,
    admin_headers: Headers,
    worker: WorkerIdentity,
    fake_keyd: FakeKeyd,
    database: Database,
):
    job_id = await create(client, world.pipeline_id, admin_headers)
    fake_keyd.available = False
    response = await client.post("/api/v1/worker/claim", headers=worker.headers)
    assert_problem(response, 503)
    stored = await database.read(lambda session: session.get_one(Job, job_id))
    assert (stored.status, stored.worker_id, stored.token_sha256) == ("pending", None, None)
    fake_keyd.available = True
    assert (await claim(client, worker)).id == job_id


async def test_a_job_keyd_refuses_is_failed_with_the_reason_and_the_next_one_is_claimed(
    client: httpx.AsyncClient,
    world: World,
    admin_headers: Headers,
    worker: WorkerIdentity,
    fake_keyd: FakeKeyd,
):
    await client.put(
        f"/api/v1/pipelines/{world.pipeline_id}/secrets/OLD",
        json={"value": "v"},
        headers=admin_headers,
    )
    fake_keyd.key = b"\x00" * 32  # as if keyd's key had been replaced
    doomed = await create(client, world.pipeline_id, admin_headers)
    other = await make_world(client, "other")
    runnable = await create(client, other.pipeline_id, admin_headers)
    claimed = await claim(client, worker)
    assert claimed.id == runnable
    failed = (await client.get(f"/api/v1/jobs/{doomed}", headers=admin_headers)).json()
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("secrets unavailable")
    assert [step["status"] for step in failed["steps"]] == ["skipped", "skipped"]


async def test_a_user_token_on_the_claim_is_403(client: httpx.AsyncClient, admin_headers: Headers):
    assert_problem(await client.post("/api/v1/worker/claim", headers=admin_headers), 403)


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
async def test_a_wait_outside_0_to_60_is_a_422(
    client: httpx.AsyncClient, worker: WorkerIdentity, wait: str
):
    response = await client.post(
        "/api/v1/worker/claim", params={"wait": wait}, headers=worker.headers
    )
    assert assert_problem(response, 422)["errors"][0]["field"] == "query parameter wait"


def claim_request(messages: list[dict[str, object]]) -> Request:
    """A real Starlette request of a claim whose ASGI `receive` hands out `messages`."""

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/api/v1/worker/claim", "headers": []}
    return Request(scope, receive)


async def test_the_claim_does_not_ask_whether_the_claimer_hung_up_before_its_first_look():
    messages: list[dict[str, object]] = [{"type": "http.disconnect"}]
    hung_up = HungUp(claim_request(messages))
    assert await hung_up() is False
    assert messages == [{"type": "http.disconnect"}]


async def test_a_claimer_that_hung_up_while_waiting_is_seen_before_the_next_look():
    hung_up = HungUp(claim_request([{"type": "http.disconnect"}]))
    await hung_up()
    assert await hung_up() is True


async def test_a_claimer_still_connected_after_its_wait_is_not_taken_for_gone():
    request = claim_request([{"type": "http.request", "body": b"", "more_body": False}])
    hung_up = HungUp(request)
    await hung_up()
    assert await hung_up() is False
