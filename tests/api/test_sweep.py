"""Lost workers: a running job whose worker has called none of its routes for
`api.worker_timeout_s` is ended once, `worker lost`, its running step failed, the rest
skipped, its secrets dropped."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.orm import Session

from danube_api.app import create_app
from danube_api.job_service import JobService
from danube_shared.config import Settings
from danube_shared.db.engine import Database
from danube_shared.db.schema import Job
from danube_shared.db.timestamps import utcnow
from tests.api.callers import ClaimedJob
from tests.api.conftest import serve_as_admin
from tests.api.fake_keyd import FakeKeyd
from tests.api.served_app import state_of
from tests.api.worker_world import RunningJob, running_job

TIMEOUT_S = 60
HANG_GUARD_S = 30


@pytest.fixture
def app(settings: Settings, fake_keyd: FakeKeyd, database: Database) -> FastAPI:
    """The app without its periodic sweep: these tests sweep themselves."""
    return create_app(
        settings,
        keyd=fake_keyd,
        database=database,
        keyd_watch_interval_s=None,
        lost_worker_sweep=False,
    )


@pytest.fixture
async def job(client: httpx.AsyncClient, database: Database) -> RunningJob:
    return await running_job(client, database)


def jobs_of(client: httpx.AsyncClient) -> JobService:
    service = state_of(client)["job_service"]
    assert isinstance(service, JobService)
    return service


def _age(session: Session, job_id: str, seconds: float) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(last_seen_at=utcnow() - timedelta(seconds=seconds))
    )


async def silence(database: Database, claimed: ClaimedJob, seconds: float = TIMEOUT_S + 5) -> None:
    """As if the job's worker had said nothing for `seconds`."""
    await database.write(_age, claimed.id, seconds)


async def test_a_silent_job_is_failed_once_as_worker_lost(
    client: httpx.AsyncClient, job: RunningJob, database: Database, fake_keyd: FakeKeyd
):
    headers = job.worker.headers
    await client.patch(f"{job.url}/steps/0", json={"status": "running"}, headers=headers)
    assert job.claimed.id in fake_keyd.jobs
    await silence(database, job.claimed)
    sweeps = await asyncio.gather(*(jobs_of(client).sweep_lost() for _ in range(3)))
    assert sorted(job_id for swept in sweeps for job_id in swept) == [job.claimed.id]
    ended = (await client.get(job.url, headers=job.admin)).json()
    assert ended["status"] == "failed"
    assert ended["reason"] == "worker lost"
    assert [step["status"] for step in ended["steps"]] == ["failed", "skipped"]
    assert job.claimed.id not in fake_keyd.jobs
    assert await jobs_of(client).sweep_lost() == []


async def test_a_lost_job_whose_cancel_was_requested_ends_cancelled(
    client: httpx.AsyncClient, job: RunningJob, database: Database
):
    await client.post(f"{job.url}/cancel", headers=job.admin)
    await silence(database, job.claimed)
    assert await jobs_of(client).sweep_lost() == [job.claimed.id]
    ended = (await client.get(job.url, headers=job.admin)).json()
    assert (ended["status"], ended["reason"]) == ("cancelled", "worker lost")


async def test_a_job_whose_worker_calls_its_routes_is_not_swept(
    client: httpx.AsyncClient, job: RunningJob, database: Database
):
    await silence(database, job.claimed, seconds=TIMEOUT_S - 10)
    assert await jobs_of(client).sweep_lost() == []
    await silence(database, job.claimed)
    await client.post(f"{job.url}/heartbeat", headers=job.worker.headers)
    assert await jobs_of(client).sweep_lost() == []
    assert (await client.get(job.url, headers=job.admin)).json()["status"] == "running"


async def test_a_restarted_worker_claiming_again_does_not_keep_its_old_job_alive(
    client: httpx.AsyncClient, job: RunningJob, database: Database
):
    await silence(database, job.claimed)
    response = await client.post("/api/v1/worker/claim", headers=job.worker.headers)
    assert response.status_code == 204
    assert await jobs_of(client).sweep_lost() == [job.claimed.id]


async def test_the_lifespan_sweeps_lost_jobs_by_itself(
    settings: Settings, fake_keyd: FakeKeyd, database: Database
):
    quick = settings.model_copy(
        update={"api": settings.api.model_copy(update={"worker_timeout_s": 1})}
    )
    app = create_app(quick, keyd=fake_keyd, database=database, keyd_watch_interval_s=None)
    async with serve_as_admin(app, database) as client:
        job = await running_job(client, database)
        await silence(database, job.claimed, seconds=5)
        status = "running"
        for _ in range(HANG_GUARD_S * 10):
            status = (await client.get(job.url, headers=job.admin)).json()["status"]
            if status != "running":
                break
            await asyncio.sleep(0.1)
        assert status == "failed"


async def test_a_new_claim_after_a_lost_job_gets_the_next_job(
    client: httpx.AsyncClient, job: RunningJob, database: Database
):
    """The lost job is not handed out again: it ended."""
    await silence(database, job.claimed)
    await jobs_of(client).sweep_lost()
    response = await client.post("/api/v1/worker/claim", headers=job.worker.headers)
    assert response.status_code == 204


async def test_two_apis_on_one_database_fail_a_lost_job_once(
    client: httpx.AsyncClient, job: RunningJob, database: Database, settings: Settings
):
    """Two nodes' APIs (each with its own engine, on PostgreSQL its own pool) sweep the
    same rows at once: one of them ends the job, the other finds it ended."""
    other_database = Database.open(settings.database)
    other_app = create_app(
        settings,
        keyd=FakeKeyd(),
        database=other_database,
        keyd_watch_interval_s=None,
        lost_worker_sweep=False,
    )
    try:
        async with serve_as_admin(other_app, other_database) as other_client:
            await silence(database, job.claimed)
            services = [jobs_of(client), jobs_of(other_client)]
            sweeps = await asyncio.gather(*(service.sweep_lost() for service in services * 3))
            assert sorted(job_id for swept in sweeps for job_id in swept) == [job.claimed.id]
    finally:
        await other_database.dispose()
    ended = (await client.get(job.url, headers=job.admin)).json()
    assert (ended["status"], ended["reason"]) == ("failed", "worker lost")
