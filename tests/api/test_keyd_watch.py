"""The self-healing keyd cache: a keyd boot id the API has not loaded running jobs into
makes it load them again, with their stored token hashes and what is left of their TTL."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from danube_api.app import create_app
from danube_api.keyd_sync import KeydSync
from danube_shared.config import Settings
from danube_shared.db.engine import Database
from danube_shared.db.schema import Job
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import KeydRejected
from tests.api.callers import claim, make_admin, make_worker, start_job
from tests.api.conftest import CapturedLogs, World, keyd_sync_of, serve_as_admin
from tests.api.fake_keyd import FakeKeyd
from tests.api.served_app import state_of


async def start(client: httpx.AsyncClient, world: World) -> tuple[str, str]:
    """A job created and claimed: its id and token."""
    started = await start_job(client, world.pipeline_id)
    return started.id, started.token


@pytest.fixture
async def keyd_sync(client: httpx.AsyncClient, world: World) -> KeydSync:
    await client.put(f"/api/v1/teams/{world.team_id}/secrets/TOKEN", json={"value": "v1"})
    return keyd_sync_of(client)


async def test_a_restarted_keyd_gets_the_running_jobs_back_with_the_same_tokens(
    client: httpx.AsyncClient, world: World, keyd_sync: KeydSync, fake_keyd: FakeKeyd
):
    await keyd_sync.check()
    job_id, token = await start(client, world)
    fake_keyd.restart()
    await keyd_sync.check()
    assert fake_keyd.job_secrets(job_id, token) == {"TOKEN": b"v1"}
    assert fake_keyd.jobs[job_id].token_sha256 == hashlib.sha256(token.encode()).digest()
    assert 590 <= fake_keyd.jobs[job_id].ttl_s <= 600
    assert keyd_sync.boot_id == fake_keyd.boot_id


async def test_a_restarted_keyd_gets_only_this_nodes_running_jobs_back(
    client: httpx.AsyncClient,
    world: World,
    keyd_sync: KeydSync,
    fake_keyd: FakeKeyd,
    database: Database,
):
    """A job claimed through another node (another API, on the shared database) is that
    node's keyd's to hold: this API's reload leaves it out."""
    await keyd_sync.check()
    own_id, _ = await start(client, world)
    elsewhere_id, _ = await start(client, world)
    await database.write(
        lambda session: session.execute(
            update(Job).where(Job.id == elsewhere_id).values(node="node-elsewhere")
        )
    )
    fake_keyd.restart()
    await keyd_sync.check()
    assert own_id in fake_keyd.jobs
    assert elsewhere_id not in fake_keyd.jobs


async def test_the_first_boot_id_seen_after_start_counts_as_new(
    client: httpx.AsyncClient, world: World, keyd_sync: KeydSync, fake_keyd: FakeKeyd
):
    job_id, token = await start(client, world)
    fake_keyd.jobs.clear()  # keyd lost the cache while the API was not watching
    assert keyd_sync.boot_id is None
    await keyd_sync.check()
    assert fake_keyd.job_secrets(job_id, token) == {"TOKEN": b"v1"}


async def test_a_boot_id_already_loaded_causes_no_reload(
    client: httpx.AsyncClient, world: World, keyd_sync: KeydSync, fake_keyd: FakeKeyd
):
    await start(client, world)
    await keyd_sync.check()
    loads = fake_keyd.calls.count("job_load")
    await keyd_sync.check()
    await keyd_sync.check()
    assert fake_keyd.calls.count("job_load") == loads


async def test_finished_and_expired_jobs_are_not_loaded_again(
    client: httpx.AsyncClient,
    world: World,
    keyd_sync: KeydSync,
    fake_keyd: FakeKeyd,
    captured_logs: CapturedLogs,
):
    finished = await start_job(client, world.pipeline_id)
    response = await client.post(
        f"/api/v1/jobs/{finished.id}/finish",
        json={"status": "succeeded"},
        headers=finished.worker.headers,
    )
    assert response.status_code == 200
    expired, _ = await start(client, world)
    running, _ = await start(client, world)
    database: Database = state_of(client)["database"]
    await database.write(
        lambda session: session.execute(
            update(Job)
            .where(Job.id == expired)
            .values(secrets_expire_at=utcnow() - timedelta(seconds=1))
        )
    )
    fake_keyd.restart()
    await keyd_sync.check()
    assert set(fake_keyd.jobs) == {running}
    (line,) = [line for line in captured_logs.lines() if line["message"] == "keyd cache reloaded"]
    assert (line["jobs"], line["secret_count"], line["expired_jobs"]) == (1, 1, 1)
    assert line["boot_id"] == fake_keyd.boot_id


async def test_while_keyd_is_down_nothing_counts_as_loaded_and_it_heals_when_back(
    client: httpx.AsyncClient, world: World, keyd_sync: KeydSync, fake_keyd: FakeKeyd
):
    job_id, token = await start(client, world)
    fake_keyd.available = False
    await keyd_sync.check()
    assert keyd_sync.boot_id is None
    fake_keyd.restart()
    fake_keyd.available = True
    await keyd_sync.check()
    assert fake_keyd.job_secrets(job_id, token) == {"TOKEN": b"v1"}


async def test_a_failed_reload_is_tried_again_at_the_next_round(
    client: httpx.AsyncClient,
    world: World,
    keyd_sync: KeydSync,
    fake_keyd: FakeKeyd,
    monkeypatch: pytest.MonkeyPatch,
):
    job_id, token = await start(client, world)
    fake_keyd.restart()
    original = fake_keyd.job_load
    failures = 1

    async def flaky_load(*args: Any) -> int:
        nonlocal failures
        if failures:
            failures -= 1
            fake_keyd.available = False
            try:
                return await original(*args)
            finally:
                fake_keyd.available = True
        return await original(*args)

    monkeypatch.setattr(fake_keyd, "job_load", flaky_load)
    await keyd_sync.check()
    assert keyd_sync.boot_id is None
    await keyd_sync.check()
    assert keyd_sync.boot_id == fake_keyd.boot_id
    assert fake_keyd.job_secrets(job_id, token) == {"TOKEN": b"v1"}


async def test_the_lifespan_runs_the_watch_and_stops_it_on_shutdown(
    settings: Settings, database: Database
):
    keyd = FakeKeyd()
    app: FastAPI = create_app(settings, keyd=keyd, database=database, keyd_watch_interval_s=0.02)
    async with serve_as_admin(app, database) as client:
        team = (await client.post("/api/v1/teams", json={"name": "w"})).json()
        pipeline = (
            await client.post(
                f"/api/v1/teams/{team['id']}/pipelines",
                json={"name": "p", "steps": [{"name": "s", "command": "c"}]},
            )
        ).json()
        job_id, token = await start(client, World(team["id"], pipeline["id"]))
        keyd.restart()
        for _ in range(200):
            if job_id in keyd.jobs:
                break
            await asyncio.sleep(0.01)
        assert keyd.job_secrets(job_id, token) == {}
    pings = keyd.calls.count("ping")
    await asyncio.sleep(0.1)
    assert keyd.calls.count("ping") == pings
    assert not keyd.closed  # handed in by the caller, so the caller's to close


async def test_a_claim_that_loaded_the_old_keyd_during_a_reload_is_reloaded(
    client: httpx.AsyncClient,
    world: World,
    keyd_sync: KeydSync,
    fake_keyd: FakeKeyd,
    monkeypatch: pytest.MonkeyPatch,
):
    """keyd restarts between a claim's `job_load` and its answer, and the watch lists the
    running jobs in that gap: it waits for the claim's load and loads its job too."""
    await keyd_sync.check()
    admin = await make_admin(state_of(client)["database"])
    job = (await client.post(f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin)).json()
    original = fake_keyd.job_load
    watch: list[asyncio.Task[None]] = []

    async def load_then_restart(*args: Any) -> int:
        loaded = await original(*args)
        if not watch:
            fake_keyd.restart()
            watch.append(asyncio.create_task(keyd_sync.check()))
            for _ in range(20):  # let the watch ping and list the running jobs
                await asyncio.sleep(0)
        return loaded

    monkeypatch.setattr(fake_keyd, "job_load", load_then_restart)
    claimed = await claim(client, await make_worker(state_of(client)["database"]))
    await watch[0]
    assert claimed.id == job["id"]
    assert fake_keyd.job_secrets(job["id"], claimed.token) == {"TOKEN": b"v1"}
    assert keyd_sync.boot_id == fake_keyd.boot_id


async def test_a_job_keyd_refuses_to_reload_does_not_keep_the_others_out(
    client: httpx.AsyncClient,
    world: World,
    keyd_sync: KeydSync,
    fake_keyd: FakeKeyd,
    monkeypatch: pytest.MonkeyPatch,
):
    """Each running job is loaded on its own: one refused load is logged and skipped, the
    others go in, and the boot id counts as loaded (retrying would be refused again)."""
    refused, _ = await start(client, world)
    kept, token = await start(client, world)
    fake_keyd.restart()
    original = fake_keyd.job_load

    async def refuse_one(job_id: str, *args: Any) -> int:
        if job_id == refused:
            raise KeydRejected("too_large", "the load exceeds the message limit")
        return await original(job_id, *args)

    monkeypatch.setattr(fake_keyd, "job_load", refuse_one)
    await keyd_sync.check()
    assert set(fake_keyd.jobs) == {kept}
    assert fake_keyd.job_secrets(kept, token) == {"TOKEN": b"v1"}
    assert keyd_sync.boot_id == fake_keyd.boot_id
