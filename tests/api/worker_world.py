"""A running job and who may touch it, for the tests of the job's worker routes."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from danube_shared.db.engine import Database
from tests.api.callers import ClaimedJob, Headers, WorkerIdentity, claim, make_admin, make_worker
from tests.api.conftest import make_world


@dataclass(frozen=True)
class RunningJob:
    """A job of a two-step pipeline (`compile`, `test`), claimed by `worker`."""

    claimed: ClaimedJob
    worker: WorkerIdentity
    admin: Headers

    @property
    def url(self) -> str:
        return f"/api/v1/jobs/{self.claimed.id}"


async def running_job(client: httpx.AsyncClient, database: Database) -> RunningJob:
    admin = await make_admin(database)
    world = await make_world(client, "run")
    response = await client.post(f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin)
    assert response.status_code == 201, response.text
    worker = await make_worker(database)
    return RunningJob(claimed=await claim(client, worker), worker=worker, admin=admin)
