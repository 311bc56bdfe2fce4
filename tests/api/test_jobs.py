"""Jobs: created pending with their steps, started with their secrets in keyd and a token
shown once, finished with their secrets dropped."""

from __future__ import annotations

import asyncio
import hashlib

import httpx

from danube_api.keyd_sync import DropRetries
from danube_shared.db.engine import Database
from danube_shared.db.schema import Job
from tests.api.conftest import World, assert_problem, keyd_sync_of, new_job
from tests.api.fake_keyd import FakeKeyd


async def stored_job(database: Database, job_id: str) -> Job:
    return await database.read(lambda session: session.get_one(Job, job_id))


async def test_a_new_job_is_pending_with_a_pending_step_per_definition(
    client: httpx.AsyncClient, world: World
):
    job = await new_job(client, world.pipeline_id)
    assert job["status"] == "pending"
    assert job["number"] == 1
    assert job["started_at"] is None
    assert [(s["position"], s["name"], s["command"], s["status"]) for s in job["steps"]] == [
        (0, "compile", "make", "pending"),
        (1, "test", "make check", "pending"),
    ]
    assert "token" not in job


async def test_jobs_are_numbered_per_pipeline_and_listed_newest_first(
    client: httpx.AsyncClient, world: World
):
    for _ in range(3):
        await new_job(client, world.pipeline_id)
    page = (
        await client.get(f"/api/v1/pipelines/{world.pipeline_id}/jobs", params={"limit": 2})
    ).json()
    assert [job["number"] for job in page["items"]] == [3, 2]
    assert page["next_offset"] == 2


async def test_jobs_of_an_unknown_pipeline_are_404(client: httpx.AsyncClient):
    assert_problem(await client.post("/api/v1/pipelines/ghost/jobs"), 404)
    assert_problem(await client.get("/api/v1/pipelines/ghost/jobs"), 404)
    assert_problem(await client.get("/api/v1/jobs/ghost"), 404)
    assert_problem(await client.post("/api/v1/jobs/ghost/start"), 404)
    assert_problem(await client.post("/api/v1/jobs/ghost/finish", json={"status": "failed"}), 404)


async def test_starting_a_job_returns_it_running_with_a_token_keyd_knows_by_hash(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd, database: Database
):
    job = await new_job(client, world.pipeline_id)
    response = await client.post(f"/api/v1/jobs/{job['id']}/start")
    assert response.status_code == 200
    started = response.json()
    assert started["status"] == "running"
    assert started["started_at"] is not None
    token = started["token"]
    assert len(token) >= 40
    cached = fake_keyd.jobs[job["id"]]
    assert cached.token_sha256 == hashlib.sha256(token.encode()).digest()
    assert cached.ttl_s == 600  # keyd.cache_ttl_s of these tests
    stored = await stored_job(database, job["id"])
    assert stored.token_sha256 == cached.token_sha256
    assert stored.secrets_expire_at is not None


async def test_a_started_job_gets_team_secrets_overridden_by_pipeline_secrets(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd
):
    await client.put(f"/api/v1/teams/{world.team_id}/secrets/SHARED", json={"value": "team"})
    await client.put(f"/api/v1/teams/{world.team_id}/secrets/TEAM_ONLY", json={"value": "t"})
    await client.put(
        f"/api/v1/pipelines/{world.pipeline_id}/secrets/SHARED", json={"value": "pipe"}
    )
    other = (await client.post("/api/v1/teams", json={"name": "other"})).json()
    await client.put(f"/api/v1/teams/{other['id']}/secrets/FOREIGN", json={"value": "no"})
    job = await new_job(client, world.pipeline_id)
    token = (await client.post(f"/api/v1/jobs/{job['id']}/start")).json()["token"]
    assert fake_keyd.job_secrets(job["id"], token) == {"SHARED": b"pipe", "TEAM_ONLY": b"t"}


async def test_the_token_is_shown_by_start_only(client: httpx.AsyncClient, world: World):
    job = await new_job(client, world.pipeline_id)
    token = (await client.post(f"/api/v1/jobs/{job['id']}/start")).json()["token"]
    later = [
        await client.get(f"/api/v1/jobs/{job['id']}"),
        await client.get(f"/api/v1/pipelines/{world.pipeline_id}/jobs"),
        await client.patch(f"/api/v1/jobs/{job['id']}/steps/0", json={"status": "running"}),
        await client.post(f"/api/v1/jobs/{job['id']}/finish", json={"status": "succeeded"}),
    ]
    for response in later:
        assert response.is_success, response.text
        assert token not in response.text
        assert "token" not in response.text


async def test_starting_a_job_that_is_not_pending_is_a_409(client: httpx.AsyncClient, world: World):
    job = await new_job(client, world.pipeline_id)
    await client.post(f"/api/v1/jobs/{job['id']}/start")
    body = assert_problem(await client.post(f"/api/v1/jobs/{job['id']}/start"), 409)
    assert "running" in body["detail"]


async def test_start_with_keyd_unavailable_is_a_503_and_the_job_stays_pending(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd, database: Database
):
    job = await new_job(client, world.pipeline_id)
    fake_keyd.available = False
    body = assert_problem(await client.post(f"/api/v1/jobs/{job['id']}/start"), 503)
    assert "keyd" in body["detail"]
    stored = await stored_job(database, job["id"])
    assert stored.status == "pending"
    assert stored.token_sha256 is None
    fake_keyd.available = True
    assert (await client.post(f"/api/v1/jobs/{job['id']}/start")).status_code == 200


async def test_a_secret_that_keyd_cannot_open_makes_start_a_502_and_the_job_stays_pending(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd, database: Database
):
    await client.put(f"/api/v1/teams/{world.team_id}/secrets/OLD", json={"value": "v"})
    fake_keyd.key = b"\x00" * 32  # as if keyd's key had been replaced
    job = await new_job(client, world.pipeline_id)
    body = assert_problem(await client.post(f"/api/v1/jobs/{job['id']}/start"), 502)
    assert "decrypt_failed" in body["detail"]
    assert (await stored_job(database, job["id"])).status == "pending"


async def test_concurrent_starts_of_one_job_give_one_token_that_keyd_holds(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd
):
    job = await new_job(client, world.pipeline_id)
    responses = await asyncio.gather(
        *(client.post(f"/api/v1/jobs/{job['id']}/start") for _ in range(5))
    )
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409, 409]
    (token,) = [r.json()["token"] for r in responses if r.status_code == 200]
    assert fake_keyd.job_secrets(job["id"], token) == {}


async def test_finishing_a_running_job_records_the_status_and_drops_its_secrets(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd
):
    job = await new_job(client, world.pipeline_id)
    await client.post(f"/api/v1/jobs/{job['id']}/start")
    response = await client.post(f"/api/v1/jobs/{job['id']}/finish", json={"status": "failed"})
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["finished_at"] is not None
    assert job["id"] not in fake_keyd.jobs


async def test_a_pending_job_can_be_cancelled_but_not_succeed(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd
):
    job = await new_job(client, world.pipeline_id)
    assert_problem(
        await client.post(f"/api/v1/jobs/{job['id']}/finish", json={"status": "succeeded"}), 409
    )
    cancelled = await client.post(f"/api/v1/jobs/{job['id']}/finish", json={"status": "cancelled"})
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert "job_drop" not in fake_keyd.calls


async def test_a_finished_job_cannot_finish_or_start_again(client: httpx.AsyncClient, world: World):
    job = await new_job(client, world.pipeline_id)
    await client.post(f"/api/v1/jobs/{job['id']}/start")
    await client.post(f"/api/v1/jobs/{job['id']}/finish", json={"status": "succeeded"})
    assert_problem(
        await client.post(f"/api/v1/jobs/{job['id']}/finish", json={"status": "failed"}), 409
    )
    assert_problem(await client.post(f"/api/v1/jobs/{job['id']}/start"), 409)


async def test_finish_needs_a_final_status(client: httpx.AsyncClient, world: World):
    job = await new_job(client, world.pipeline_id)
    for body in ({"status": "running"}, {"status": "pending"}, {}, {"status": 1}):
        response = await client.post(f"/api/v1/jobs/{job['id']}/finish", json=body)
        assert assert_problem(response, 422)["errors"][0]["field"] == "status"


async def test_finish_with_keyd_down_still_finishes_and_retries_the_drop(
    client: httpx.AsyncClient, world: World, fake_keyd: FakeKeyd
):
    job = await new_job(client, world.pipeline_id)
    await client.post(f"/api/v1/jobs/{job['id']}/start")
    keyd_sync_of(client).drop_retries = retries = DropRetries(
        fake_keyd, delays_s=(0.05, 0.05, 0.05)
    )
    fake_keyd.available = False
    response = await client.post(f"/api/v1/jobs/{job['id']}/finish", json={"status": "succeeded"})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert retries.pending == 1
    assert job["id"] in fake_keyd.jobs
    fake_keyd.available = True
    for _ in range(100):
        if retries.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert job["id"] not in fake_keyd.jobs
