"""The API against a real `danube-keyd` over its real ipc:// sockets: a worker fetches
exactly its job's secrets with the token its claim returned, until the job finishes; keyd
failures answer 503 within the deadline and heal without restarting the API."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import select

from danube_shared.config import Settings
from danube_shared.db.engine import Database
from danube_shared.db.schema import Job, Secret
from danube_shared.errors import KeydRejected
from danube_shared.keyd_control_client import KeydControlClient
from danube_shared.keyd_worker_client import fetch_job_secrets_async
from tests.api.callers import Headers, WorkerIdentity, claim, make_admin, make_worker
from tests.api.conftest import (
    REAL_KEYD_TIMEOUT_MS,
    KeydRunner,
    World,
    assert_problem,
    keyd_sync_of,
    make_world,
)

DEADLINE_S = REAL_KEYD_TIMEOUT_MS / 1000
# The suite never fails on a timing: this bound only catches a hang (a request that
# waits for keyd forever); the 503's detail says which deadline was applied.
HANG_GUARD_S = 10 * DEADLINE_S


@pytest.fixture
async def admin_headers(database: Database) -> Headers:
    return await make_admin(database)


@pytest.fixture
async def worker(database: Database) -> WorkerIdentity:
    return await make_worker(database)


@pytest.fixture
async def world(real_client: httpx.AsyncClient) -> World:
    world = await make_world(real_client)
    for url, value in (
        (f"/api/v1/teams/{world.team_id}/secrets/SHARED", "team-value"),
        (f"/api/v1/teams/{world.team_id}/secrets/REGISTRY", "registry-value"),
        (f"/api/v1/pipelines/{world.pipeline_id}/secrets/SHARED", "pipeline-value"),
    ):
        assert (await real_client.put(url, json={"value": value})).status_code == 201
    return world


EXPECTED = {"SHARED": b"pipeline-value", "REGISTRY": b"registry-value"}


async def create(client: httpx.AsyncClient, world: World, admin_headers: Headers) -> str:
    response = await client.post(
        f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin_headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def started_job(
    client: httpx.AsyncClient, world: World, admin_headers: Headers, worker: WorkerIdentity
) -> tuple[str, str]:
    """A job created and claimed: its id and token."""
    job_id = await create(client, world, admin_headers)
    claimed = await claim(client, worker)
    assert claimed.id == job_id
    return job_id, claimed.token


async def test_a_worker_fetches_its_job_s_secrets_with_the_token_until_the_job_finishes(
    *,
    real_client: httpx.AsyncClient,
    world: World,
    real_settings: Settings,
    admin_headers: Headers,
    worker: WorkerIdentity,
):
    job_id, token = await started_job(real_client, world, admin_headers, worker)
    assert await fetch_job_secrets_async(real_settings, job_id, token) == EXPECTED
    finished = await real_client.post(
        f"/api/v1/jobs/{job_id}/finish", json={"status": "succeeded"}, headers=worker.headers
    )
    assert finished.status_code == 200
    with pytest.raises(KeydRejected) as refused:
        await fetch_job_secrets_async(real_settings, job_id, token)
    assert refused.value.reason == "not_found"


async def test_another_job_s_token_is_unauthorized(
    *,
    real_client: httpx.AsyncClient,
    world: World,
    real_settings: Settings,
    admin_headers: Headers,
    worker: WorkerIdentity,
):
    first, _ = await started_job(real_client, world, admin_headers, worker)
    _, other_token = await started_job(real_client, world, admin_headers, worker)
    with pytest.raises(KeydRejected) as refused:
        await fetch_job_secrets_async(real_settings, first, other_token)
    assert refused.value.reason == "unauthorized"


async def test_a_stored_ciphertext_opens_only_under_its_own_row_s_context(
    real_client: httpx.AsyncClient, world: World, real_settings: Settings, database: Database
):
    rows = await database.read(
        lambda session: list(session.scalars(select(Secret).order_by(Secret.name)).all())
    )
    client = KeydControlClient(real_settings.keyd)
    try:
        # keyd has no decrypt op: rewrap opens each ciphertext inside keyd, under its
        # context, and seals it again; the plaintexts are checked through a job above.
        resealed = await client.rewrap([(row.ciphertext, f"secret:{row.id}") for row in rows])
        assert len(resealed) == len(rows)
        with pytest.raises(KeydRejected) as refused:
            await client.rewrap([(rows[0].ciphertext, f"secret:{rows[1].id}")])
        assert refused.value.reason == "decrypt_failed"
        assert {row.key_id for row in rows} == {(await client.ping()).key_id}
    finally:
        await client.close()


async def test_a_frozen_keyd_makes_a_claim_a_503_within_the_deadline_and_the_job_stays_pending(
    *,
    real_client: httpx.AsyncClient,
    world: World,
    keyd_runner: KeydRunner,
    database: Database,
    admin_headers: Headers,
    worker: WorkerIdentity,
):
    job_id = await create(real_client, world, admin_headers)
    keyd_runner.freeze()
    try:
        began = time.monotonic()
        response = await real_client.post("/api/v1/worker/claim", headers=worker.headers)
        elapsed = time.monotonic() - began
    finally:
        keyd_runner.thaw()
    assert "keyd" in assert_problem(response, 503)["detail"]
    assert elapsed <= HANG_GUARD_S
    stored = await database.read(lambda session: session.get_one(Job, job_id))
    assert (stored.status, stored.worker_id) == ("pending", None)
    assert (await claim(real_client, worker)).id == job_id


async def test_a_frozen_keyd_makes_a_secret_put_a_503_within_the_deadline(
    real_client: httpx.AsyncClient, world: World, keyd_runner: KeydRunner
):
    url = f"/api/v1/teams/{world.team_id}/secrets/LATE"
    keyd_runner.freeze()
    try:
        began = time.monotonic()
        response = await real_client.put(url, json={"value": "late"})
        elapsed = time.monotonic() - began
    finally:
        keyd_runner.thaw()
    assert_problem(response, 503)
    assert elapsed <= HANG_GUARD_S
    listed = (await real_client.get(f"/api/v1/teams/{world.team_id}/secrets")).json()
    assert "LATE" not in [item["name"] for item in listed["items"]]


async def test_a_killed_keyd_gives_503_then_a_new_keyd_serves_the_same_app(
    *,
    real_client: httpx.AsyncClient,
    world: World,
    keyd_runner: KeydRunner,
    real_settings: Settings,
    admin_headers: Headers,
    worker: WorkerIdentity,
):
    running, token = await started_job(real_client, world, admin_headers, worker)
    pending = await create(real_client, world, admin_headers)
    keyd_runner.kill()
    began = time.monotonic()
    response = await real_client.post("/api/v1/worker/claim", headers=worker.headers)
    assert_problem(response, 503)
    assert time.monotonic() - began <= HANG_GUARD_S
    keyd_runner.start()
    # The watch sees the new boot id and loads the running job again, same token.
    for _ in range(100):
        try:
            secrets = await fetch_job_secrets_async(real_settings, running, token)
            break
        except KeydRejected:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the running job's secrets did not come back")
    assert secrets == EXPECTED
    restarted = await claim(real_client, worker)
    assert restarted.id == pending
    assert await fetch_job_secrets_async(real_settings, pending, restarted.token) == EXPECTED


async def test_a_finish_while_keyd_is_down_is_dropped_once_keyd_is_back(
    *,
    real_client: httpx.AsyncClient,
    world: World,
    keyd_runner: KeydRunner,
    real_settings: Settings,
    admin_headers: Headers,
    worker: WorkerIdentity,
):
    job_id, token = await started_job(real_client, world, admin_headers, worker)
    keyd_sync = keyd_sync_of(real_client)
    keyd_runner.freeze()
    try:
        finished = await real_client.post(
            f"/api/v1/jobs/{job_id}/finish", json={"status": "failed"}, headers=worker.headers
        )
    finally:
        keyd_runner.thaw()
    assert finished.status_code == 200
    assert finished.json()["status"] == "failed"
    assert keyd_sync.drop_retries.pending == 1
    for _ in range(60):
        if keyd_sync.drop_retries.pending == 0:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(KeydRejected) as refused:
        await fetch_job_secrets_async(real_settings, job_id, token)
    assert refused.value.reason == "not_found"
