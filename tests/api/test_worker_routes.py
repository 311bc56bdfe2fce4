"""The routes of a job's worker: heartbeat, finish, and who else may call them (nobody:
another worker's view is that the job does not exist; a user is refused)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import pytest

from danube_api.app import create_app
from danube_api.keyd_sync import DropRetries
from danube_shared.config import Settings
from danube_shared.db.engine import Database
from danube_shared.db.schema import Job
from tests.api.callers import make_worker
from tests.api.conftest import assert_problem, keyd_sync_of
from tests.api.fake_keyd import FakeKeyd
from tests.api.served_app import serve
from tests.api.worker_world import RunningJob, running_job


@pytest.fixture
async def job(client: httpx.AsyncClient, database: Database) -> RunningJob:
    return await running_job(client, database)


async def last_seen(database: Database, job_id: str) -> datetime:
    stored = await database.read(lambda session: session.get_one(Job, job_id))
    assert stored.last_seen_at is not None
    return stored.last_seen_at


async def test_a_heartbeat_renews_the_lease_and_says_no_cancel_was_requested(
    client: httpx.AsyncClient, job: RunningJob, database: Database
):
    before = await last_seen(database, job.claimed.id)
    await asyncio.sleep(0.01)
    response = await client.post(f"{job.url}/heartbeat", headers=job.worker.headers)
    assert response.status_code == 200
    assert response.json() == {"cancel_requested": False}
    assert await last_seen(database, job.claimed.id) > before


async def test_finish_skips_the_steps_not_yet_final_and_drops_the_secrets(
    client: httpx.AsyncClient, job: RunningJob, fake_keyd: FakeKeyd
):
    headers = job.worker.headers
    await client.patch(f"{job.url}/steps/0", json={"status": "running"}, headers=headers)
    await client.patch(
        f"{job.url}/steps/0", json={"status": "failed", "exit_code": 2}, headers=headers
    )
    assert job.claimed.id in fake_keyd.jobs
    response = await client.post(
        f"{job.url}/finish",
        json={"status": "failed", "reason": "step compile failed"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    finished = response.json()
    assert finished["status"] == "failed"
    assert finished["reason"] == "step compile failed"
    assert finished["finished_at"] is not None
    assert [(s["status"], s["exit_code"]) for s in finished["steps"]] == [
        ("failed", 2),
        ("skipped", None),
    ]
    assert job.claimed.id not in fake_keyd.jobs


async def test_a_finished_job_takes_no_more_worker_calls(
    client: httpx.AsyncClient, job: RunningJob
):
    headers = job.worker.headers
    await client.post(f"{job.url}/finish", json={"status": "succeeded"}, headers=headers)
    assert_problem(await client.post(f"{job.url}/heartbeat", headers=headers), 409)
    assert_problem(
        await client.post(f"{job.url}/finish", json={"status": "failed"}, headers=headers), 409
    )
    assert_problem(
        await client.patch(f"{job.url}/steps/0", json={"status": "running"}, headers=headers),
        409,
    )


@pytest.mark.parametrize("body", [{"status": "running"}, {"status": "skipped"}, {}])
async def test_finish_needs_a_final_status(
    client: httpx.AsyncClient, job: RunningJob, body: dict[str, str]
):
    response = await client.post(f"{job.url}/finish", json=body, headers=job.worker.headers)
    assert assert_problem(response, 422)["errors"][0]["field"] == "status"


async def test_another_worker_s_job_is_404_on_every_worker_route(
    client: httpx.AsyncClient, job: RunningJob, database: Database
):
    other = (await make_worker(database, "other")).headers
    for response in (
        await client.post(f"{job.url}/heartbeat", headers=other),
        await client.patch(f"{job.url}/steps/0", json={"status": "running"}, headers=other),
        await client.post(
            f"{job.url}/steps/0/log", params={"offset": 0}, content=b"x", headers=other
        ),
        await client.post(f"{job.url}/finish", json={"status": "failed"}, headers=other),
        await client.post(
            f"{job.url}/artifacts",
            json={"name": "a", "size_bytes": 1, "sha256": "ab" * 32, "uri": "s3://a"},
            headers=other,
        ),
    ):
        assert_problem(response, 404)


async def test_a_job_that_does_not_exist_is_404_on_the_worker_routes(
    client: httpx.AsyncClient, job: RunningJob
):
    url = "/api/v1/jobs/00000000-0000-0000-0000-000000000000"
    headers = job.worker.headers
    for response in (
        await client.post(f"{url}/heartbeat", headers=headers),
        await client.patch(f"{url}/steps/0", json={"status": "running"}, headers=headers),
        await client.post(f"{url}/finish", json={"status": "failed"}, headers=headers),
    ):
        assert_problem(response, 404)


async def test_finish_ends_a_running_step_skipped_at_the_job_s_end_and_skips_the_rest(
    client: httpx.AsyncClient, job: RunningJob
):
    headers = job.worker.headers
    await client.patch(f"{job.url}/steps/0", json={"status": "running"}, headers=headers)
    response = await client.post(
        f"{job.url}/finish", json={"status": "cancelled", "reason": "stopped"}, headers=headers
    )
    assert response.status_code == 200, response.text
    finished = response.json()
    assert (finished["status"], finished["reason"]) == ("cancelled", "stopped")
    running, unstarted = finished["steps"]
    assert running["status"] == "skipped"
    assert running["started_at"] is not None
    assert running["finished_at"] == finished["finished_at"]
    assert unstarted["status"] == "skipped"
    assert unstarted["finished_at"] is None
    assert finished["worker_id"] == job.worker.worker_id


async def test_finish_after_every_step_ended_answers_the_steps_as_they_ended(
    client: httpx.AsyncClient, job: RunningJob
):
    headers = job.worker.headers
    ended: list[dict[str, object]] = []
    for position in (0, 1):
        url = f"{job.url}/steps/{position}"
        await client.patch(url, json={"status": "running"}, headers=headers)
        response = await client.patch(
            url, json={"status": "succeeded", "exit_code": 0}, headers=headers
        )
        ended.append(response.json())
    response = await client.post(f"{job.url}/finish", json={"status": "succeeded"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["steps"] == ended
    shown = await client.get(job.url, headers=job.admin)
    assert shown.json()["steps"] == ended


async def test_a_user_token_on_worker_routes_is_403(client: httpx.AsyncClient, job: RunningJob):
    admin = job.admin
    for response in (
        await client.post(f"{job.url}/heartbeat", headers=admin),
        await client.patch(f"{job.url}/steps/0", json={"status": "running"}, headers=admin),
        await client.post(
            f"{job.url}/steps/0/log", params={"offset": 0}, content=b"x", headers=admin
        ),
        await client.post(f"{job.url}/finish", json={"status": "failed"}, headers=admin),
        await client.post("/api/v1/worker/claim", headers=admin),
    ):
        assert_problem(response, 403)


async def test_finish_with_keyd_down_still_finishes_and_retries_the_drop(
    client: httpx.AsyncClient, job: RunningJob, fake_keyd: FakeKeyd
):
    keyd_sync_of(client).drop_retries = retries = DropRetries(
        fake_keyd, delays_s=(0.05, 0.05, 0.05)
    )
    fake_keyd.available = False
    response = await client.post(
        f"{job.url}/finish", json={"status": "succeeded"}, headers=job.worker.headers
    )
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert retries.pending == 1
    fake_keyd.available = True
    for _ in range(500):
        if retries.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert job.claimed.id not in fake_keyd.jobs


async def test_another_worker_s_finish_drops_nothing(
    client: httpx.AsyncClient, job: RunningJob, database: Database, fake_keyd: FakeKeyd
):
    """The finish overlaps the drop with the write only for the worker the job was
    given to: anyone else's finish is a 404 and leaves the job's secrets in keyd."""
    other = await make_worker(database, "w2")
    response = await client.post(
        f"{job.url}/finish", json={"status": "succeeded"}, headers=other.headers
    )
    assert_problem(response, 404)
    assert "job_drop" not in fake_keyd.calls
    assert job.claimed.id in fake_keyd.jobs


async def test_a_finish_through_an_api_that_did_not_hand_out_the_job_ends_it_and_drops(
    settings: Settings, database: Database, job: RunningJob, fake_keyd: FakeKeyd
):
    """A job claimed through another API process (or before a restart) is finished
    through this one: the write checks the claim, then the secrets are dropped."""
    other = create_app(settings, keyd=fake_keyd, database=database, keyd_watch_interval_s=None)
    async with serve(other) as other_client:
        response = await other_client.post(
            f"{job.url}/finish", json={"status": "succeeded"}, headers=job.worker.headers
        )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    assert job.claimed.id not in fake_keyd.jobs
