"""A secret's value goes in through the API and comes out only to its job's worker: it is
in no file the stack writes (database, WAL, shared memory, the API's and keyd's logs) and
in no HTTP response, in plain, base64, hex, URL- or JSON-encoded form."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx

from danube_api.app import create_app
from danube_shared.config import LogSettings, Settings
from danube_shared.db.engine import Database
from danube_shared.errors import KeydRejected
from danube_shared.keyd_client import fetch_job_secrets_async
from danube_shared.logs import configure_logging
from tests.api.asgi_harness import serve
from tests.api.conftest import KeydRunner, make_world, new_job, reset_logging


def encodings(value: str) -> dict[str, bytes]:
    raw = value.encode()
    return {
        "plain": raw,
        "base64": base64.b64encode(raw),
        "base64 unpadded": base64.b64encode(raw).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "url": quote(value, safe="").encode(),
        "url plus": quote_plus(value).encode(),
        "json": json.dumps(value)[1:-1].encode(),
    }


def plant(tag: str) -> str:
    # Characters that URL- and JSON-encoding change, so each form differs from plain.
    return f"pl@nt {tag} {uuid.uuid4().hex}/+=&?é"


def files_under(*roots: Path) -> dict[Path, bytes]:
    return {
        path: path.read_bytes()
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and path.name != "encryption.key"
    }


async def fetched_again(settings: Settings, job_id: str, token: str) -> dict[str, bytes]:
    for _ in range(100):
        try:
            return await fetch_job_secrets_async(settings, job_id, token)
        except KeydRejected:
            await asyncio.sleep(0.05)
    raise AssertionError("the running job's secrets were not reloaded")


async def exercise(
    client: httpx.AsyncClient, settings: Settings, keyd: KeydRunner
) -> dict[str, str]:
    """Plant values every way the API takes them, run jobs that use them; returns the
    values that must be nowhere."""
    world = await make_world(client)
    team = f"/api/v1/teams/{world.team_id}/secrets"
    pipeline = f"/api/v1/pipelines/{world.pipeline_id}/secrets"
    values = {
        name: plant(name)
        for name in ("team", "pipeline", "shadowed", "replaced", "final", "deleted", "rejected")
    }
    puts = [
        (f"{team}/TEAM_ONLY", values["team"]),
        (f"{team}/SHARED", values["shadowed"]),
        (f"{pipeline}/SHARED", values["pipeline"]),
        (f"{pipeline}/ROTATED", values["replaced"]),
        (f"{pipeline}/ROTATED", values["final"]),
        (f"{team}/GONE", values["deleted"]),
    ]
    for url, value in puts:
        assert (await client.put(url, json={"value": value})).is_success
    assert (await client.delete(f"{team}/GONE")).status_code == 204
    rejected = await client.put(f"{team}/NOPE", json={"value": values["rejected"], "extra": 1})
    assert rejected.status_code == 422
    assert (await client.put(f"{team}/1BAD", json={"value": values["rejected"]})).status_code == 422

    for outcome in ("succeeded", "failed"):
        job = await new_job(client, world.pipeline_id)
        started = (await client.post(f"/api/v1/jobs/{job['id']}/start")).json()
        fetched = await fetch_job_secrets_async(settings, job["id"], started["token"])
        assert fetched == {
            "TEAM_ONLY": values["team"].encode(),
            "SHARED": values["pipeline"].encode(),
            "ROTATED": values["final"].encode(),
        }
        await client.patch(f"/api/v1/jobs/{job['id']}/steps/0", json={"status": "running"})
        # keyd restarts: the API loads the running job's secrets into the new one.
        keyd.kill()
        keyd.start()
        assert await fetched_again(settings, job["id"], started["token"]) == fetched
        await client.post(f"/api/v1/jobs/{job['id']}/finish", json={"status": outcome})
    for url in (team, pipeline, f"/api/v1/pipelines/{world.pipeline_id}/jobs"):
        assert (await client.get(url)).status_code == 200
    return values


async def test_planted_values_are_in_no_file_no_log_line_and_no_response(
    real_settings: Settings, keyd_runner: KeydRunner, tmp_path: Path
):
    log_path = tmp_path / "api.log"
    responses: list[bytes] = []

    async def keep(response: httpx.Response) -> None:
        responses.append(await response.aread())

    stack_files: list[tuple[str, bytes]] = []

    def snapshot(when: str) -> None:
        # The test's directory holds the database and its -wal and -shm, and the log.
        roots = (tmp_path, keyd_runner.home.root)
        stack_files.extend((f"{path} ({when})", data) for path, data in files_under(*roots).items())

    with log_path.open("w") as log:
        configure_logging(LogSettings(level="trace"), "danube-api", log)
        try:
            database = Database.open(real_settings.database)
            app = create_app(real_settings, database=database, keyd_watch_interval_s=0.05)
            async with serve(app) as client:
                client.event_hooks["response"] = [keep]
                values = await exercise(client, real_settings, keyd_runner)
            snapshot("database open")
            await database.dispose()
        finally:
            reset_logging()
    snapshot("database closed")
    assert any(where.endswith("danube.db-wal (database open)") for where, _ in stack_files)
    assert b'"message": "request"' in log_path.read_bytes()
    assert any("keyd.log" in where for where, _ in stack_files)
    for name, value in values.items():
        for form, needle in encodings(value).items():
            for where, data in stack_files:
                assert needle not in data, f"{name} value found {form} in {where}"
            for body in responses:
                assert needle not in body, f"{name} value found {form} in a response"
