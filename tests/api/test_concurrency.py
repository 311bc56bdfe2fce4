"""Hundreds of concurrent writes through the API, on a real SQLite file: every one
succeeds (no `database is locked`), job numbers stay unique per pipeline, and every
secret's ciphertext stays bound to its row even when writers race on one name."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

import httpx
from sqlalchemy import select

from danube_shared.db.engine import Database
from danube_shared.db.schema import Job, Secret
from tests.api.callers import make_admin, make_worker
from tests.api.conftest import CapturedLogs, make_world
from tests.api.fake_keyd import FakeKeyd

JOBS = 200
SECRET_NAMES = 50  # each put twice at once: 100 writes racing in pairs


async def test_300_concurrent_job_and_secret_writes_all_succeed(
    client: httpx.AsyncClient, database: Database, fake_keyd: FakeKeyd, captured_logs: CapturedLogs
):
    worlds = [await make_world(client, tag) for tag in ("x", "y", "z")]
    writes = [
        client.post(f"/api/v1/pipelines/{worlds[index % 3].pipeline_id}/jobs")
        for index in range(JOBS)
    ] + [
        client.put(
            f"/api/v1/teams/{worlds[0].team_id}/secrets/S{index % SECRET_NAMES}",
            json={"value": f"value-{index}"},
        )
        for index in range(2 * SECRET_NAMES)
    ]
    responses = await asyncio.gather(*writes)

    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) <= {200, 201}, [r.text for r in responses if r.status_code >= 300][:3]
    assert statuses[201] >= JOBS + SECRET_NAMES
    jobs = await database.read(lambda session: session.scalars(select(Job)).all())
    secrets = await database.read(lambda session: session.scalars(select(Secret)).all())
    numbers: defaultdict[str, list[int]] = defaultdict(list)
    for job in jobs:
        numbers[job.pipeline_id].append(job.number)
    assert sorted(len(found) for found in numbers.values()) == [66, 67, 67]
    for found in numbers.values():
        assert sorted(found) == list(range(1, len(found) + 1))
    assert len(secrets) == SECRET_NAMES
    for secret in secrets:
        index = int(secret.name[1:])
        assert fake_keyd.open(secret.ciphertext, f"secret:{secret.id}") in (
            f"value-{index}".encode(),
            f"value-{index + SECRET_NAMES}".encode(),
        )
    assert "database is locked" not in captured_logs.text
    assert len(captured_logs.requests()) == 3 * 2 + JOBS + 2 * SECRET_NAMES


async def test_concurrent_claims_and_finishes_of_many_jobs_all_succeed(
    client: httpx.AsyncClient, fake_keyd: FakeKeyd, database: Database
):
    world = await make_world(client)
    admin = await make_admin(database)
    worker = await make_worker(database)
    await client.put(
        f"/api/v1/teams/{world.team_id}/secrets/TOKEN", json={"value": "t"}, headers=admin
    )
    created = await asyncio.gather(
        *(
            client.post(f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin)
            for _ in range(100)
        )
    )
    ids = [response.json()["id"] for response in created]
    claimed = await asyncio.gather(
        *(client.post("/api/v1/worker/claim", headers=worker.headers) for _ in ids)
    )
    assert {response.status_code for response in claimed} == {200}
    assert sorted(response.json()["job"]["id"] for response in claimed) == sorted(ids)
    assert set(fake_keyd.jobs) == set(ids)
    finished = await asyncio.gather(
        *(
            client.post(
                f"/api/v1/jobs/{job_id}/finish",
                json={"status": "succeeded"},
                headers=worker.headers,
            )
            for job_id in ids
        )
    )
    assert {response.status_code for response in finished} == {200}
    assert fake_keyd.jobs == {}
