"""Jobs as a member sees them: created pending with their steps, numbered, listed, read and
cancelled (a pending job at once, a running one by asking its worker)."""

from __future__ import annotations

import httpx
import pytest

from danube_shared.db.engine import Database
from tests.api.callers import Headers, WorkerIdentity, claim, make_admin, make_user, make_worker
from tests.api.conftest import World, assert_problem
from tests.api.fake_keyd import FakeKeyd

JOB_FIELDS = {"number", "steps", "worker_id", "node", "cancel_requested", "reason"}


@pytest.fixture
async def admin_headers(database: Database) -> Headers:
    return await make_admin(database)


@pytest.fixture
async def worker(database: Database) -> WorkerIdentity:
    return await make_worker(database)


async def create(
    client: httpx.AsyncClient, world: World, admin_headers: Headers
) -> dict[str, object]:
    response = await client.post(
        f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin_headers
    )
    assert response.status_code == 201, response.text
    job: dict[str, object] = response.json()
    return job


async def test_a_new_job_is_pending_with_a_pending_step_per_definition(
    client: httpx.AsyncClient, world: World, admin_headers: Headers
):
    job = await create(client, world, admin_headers)
    assert set(job) >= JOB_FIELDS
    assert job["status"] == "pending"
    assert job["number"] == 1
    assert (job["worker_id"], job["node"], job["cancel_requested"], job["reason"]) == (
        None,
        None,
        False,
        None,
    )
    steps = job["steps"]
    assert isinstance(steps, list)
    assert [(s["position"], s["name"], s["status"], s["timeout_s"]) for s in steps] == [
        (0, "compile", "pending", 3600),
        (1, "test", "pending", 3600),
    ]
    assert "token" not in job


async def test_jobs_are_numbered_per_pipeline_and_listed_newest_first(
    client: httpx.AsyncClient, world: World, admin_headers: Headers
):
    for _ in range(3):
        await create(client, world, admin_headers)
    page = (
        await client.get(
            f"/api/v1/pipelines/{world.pipeline_id}/jobs",
            params={"limit": 2},
            headers=admin_headers,
        )
    ).json()
    assert [job["number"] for job in page["items"]] == [3, 2]
    assert page["next_offset"] == 2


async def test_jobs_of_an_unknown_pipeline_or_id_are_404(
    client: httpx.AsyncClient, admin_headers: Headers
):
    assert_problem(await client.post("/api/v1/pipelines/ghost/jobs", headers=admin_headers), 404)
    assert_problem(await client.get("/api/v1/pipelines/ghost/jobs", headers=admin_headers), 404)
    assert_problem(await client.get("/api/v1/jobs/ghost", headers=admin_headers), 404)
    assert_problem(await client.post("/api/v1/jobs/ghost/cancel", headers=admin_headers), 404)


async def test_start_is_gone(client: httpx.AsyncClient, world: World, admin_headers: Headers):
    job = await create(client, world, admin_headers)
    response = await client.post(f"/api/v1/jobs/{job['id']}/start", headers=admin_headers)
    assert response.status_code in {404, 405}


async def test_a_user_outside_the_team_gets_404_for_its_jobs(
    client: httpx.AsyncClient, world: World, admin_headers: Headers, database: Database
):
    job = await create(client, world, admin_headers)
    _, outsider = await make_user(database, "outsider")
    assert_problem(
        await client.post(f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=outsider), 404
    )
    assert_problem(await client.get(f"/api/v1/jobs/{job['id']}", headers=outsider), 404)
    assert_problem(await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=outsider), 404)


async def test_a_worker_token_on_member_routes_is_403(
    client: httpx.AsyncClient, world: World, admin_headers: Headers, worker: WorkerIdentity
):
    job = await create(client, world, admin_headers)
    assert_problem(await client.get(f"/api/v1/jobs/{job['id']}", headers=worker.headers), 403)
    assert_problem(
        await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=worker.headers), 403
    )


async def test_no_token_is_401(client: httpx.AsyncClient, world: World, admin_headers: Headers):
    job = await create(client, world, admin_headers)
    response = await client.get(f"/api/v1/jobs/{job['id']}", headers={"Authorization": ""})
    assert_problem(response, 401)


async def test_cancelling_a_pending_job_cancels_it_at_once_and_skips_its_steps(
    client: httpx.AsyncClient, world: World, admin_headers: Headers, fake_keyd: FakeKeyd
):
    job = await create(client, world, admin_headers)
    response = await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=admin_headers)
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert [step["status"] for step in cancelled["steps"]] == ["skipped", "skipped"]
    assert "job_drop" not in fake_keyd.calls


async def test_cancelling_a_running_job_asks_its_worker_and_leaves_it_running(
    client: httpx.AsyncClient, world: World, admin_headers: Headers, worker: WorkerIdentity
):
    await create(client, world, admin_headers)
    claimed = await claim(client, worker)
    response = await client.post(f"/api/v1/jobs/{claimed.id}/cancel", headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["status"] == "running"
    assert response.json()["cancel_requested"] is True
    beat = await client.post(f"/api/v1/jobs/{claimed.id}/heartbeat", headers=worker.headers)
    assert beat.json() == {"cancel_requested": True}


async def test_cancelling_a_finished_job_is_a_409(
    client: httpx.AsyncClient, world: World, admin_headers: Headers
):
    job = await create(client, world, admin_headers)
    await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=admin_headers)
    body = assert_problem(
        await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=admin_headers), 409
    )
    assert "cancelled" in body["detail"]


async def test_the_job_token_is_shown_by_the_claim_only(
    client: httpx.AsyncClient, world: World, admin_headers: Headers, worker: WorkerIdentity
):
    await create(client, world, admin_headers)
    claimed = await claim(client, worker)
    base = f"/api/v1/jobs/{claimed.id}"
    later = [
        await client.get(base, headers=admin_headers),
        await client.get(f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin_headers),
        await client.patch(f"{base}/steps/0", json={"status": "running"}, headers=worker.headers),
        await client.post(f"{base}/heartbeat", headers=worker.headers),
        await client.post(f"{base}/finish", json={"status": "succeeded"}, headers=worker.headers),
    ]
    for response in later:
        assert response.is_success, response.text
        assert claimed.token not in response.text
        assert "token" not in response.text


async def test_a_job_token_as_a_bearer_token_is_401(
    client: httpx.AsyncClient, world: World, admin_headers: Headers, worker: WorkerIdentity
):
    await create(client, world, admin_headers)
    claimed = await claim(client, worker)
    as_bearer = {"Authorization": f"Bearer {claimed.token}"}
    assert_problem(await client.get(f"/api/v1/jobs/{claimed.id}", headers=as_bearer), 401)
    assert_problem(
        await client.post(f"/api/v1/jobs/{claimed.id}/heartbeat", headers=as_bearer), 401
    )
