"""A secret's value goes in through the API and comes out only to its job's worker: it is
in no file the stack writes (database, WAL, shared memory, the API's and keyd's logs) and
in no HTTP response, in plain, base64, hex, URL- or JSON-encoded form. The same holds for
a job's token outside the one response that hands it out (`start`'s), and for a stored
ciphertext outside the database: no log line and no response holds one.

The API runs in-process here; tests/e2e/test_secret_hygiene.py searches a real stack's
files, supervisord's and every program's log included."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx

from danube_api.app import create_app
from danube_shared.config import LogSettings, Settings
from danube_shared.db.engine import Database
from danube_shared.errors import KeydRejected
from danube_shared.keyd_worker_client import fetch_job_secrets_async
from danube_shared.logs import configure_logging
from tests.api.callers import start_job
from tests.api.conftest import KeydRunner, make_world, reset_logging, serve_as_admin
from tests.support.postgres import sqlite_only

# The files scanned are the SQLite database and its WAL; on PostgreSQL the server's data
# directory is scanned by tests/e2e/test_two_nodes.py.
pytestmark = sqlite_only("scans the SQLite database file and its WAL")


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


def byte_encodings(data: bytes) -> dict[str, bytes]:
    """`data` (a ciphertext) as it could show up in a text file or a body: raw, in the
    usual text encodings, and as Python prints bytes (`b'\\x01...'`, which is how
    library loggers pass SQL parameters on), also once more escaped by the JSON renderer."""
    printed = repr(data)[2:-1]
    return {
        "raw": data,
        "base64": base64.b64encode(data),
        "base64 unpadded": base64.b64encode(data).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(data).rstrip(b"="),
        "hex": data.hex().encode(),
        "HEX": data.hex().upper().encode(),
        "url": quote(data, safe="").encode(),
        "python repr": printed.encode(),
        "python repr in json": json.dumps(printed)[1:-1].encode(),
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


def stored_ciphertexts(database: Path) -> set[bytes]:
    """Every ciphertext in the secrets table now, read beside the app (WAL lets it)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return {bytes(row[0]) for row in db.execute("SELECT ciphertext FROM secrets")}


@dataclass
class Planted:
    """What must be nowhere: secret values (anywhere), job tokens (anywhere but start's
    response) and ciphertexts (anywhere but the database)."""

    values: dict[str, str] = field(default_factory=dict[str, str])
    tokens: list[str] = field(default_factory=list[str])
    ciphertexts: set[bytes] = field(default_factory=set[bytes])


async def exercise(client: httpx.AsyncClient, settings: Settings, keyd: KeydRunner) -> Planted:
    """Plant values every way the API takes them, run jobs that use them; returns what
    must be nowhere."""
    planted = Planted()
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
        # Taken after each write: a replaced or deleted secret's ciphertext counts too.
        planted.ciphertexts |= stored_ciphertexts(settings.database.path)
    assert len(planted.ciphertexts) == len(puts)
    assert (await client.delete(f"{team}/GONE")).status_code == 204
    rejected = await client.put(f"{team}/NOPE", json={"value": values["rejected"], "extra": 1})
    assert rejected.status_code == 422
    assert (await client.put(f"{team}/1BAD", json={"value": values["rejected"]})).status_code == 422

    for outcome in ("succeeded", "failed"):
        started = await start_job(client, world.pipeline_id)
        job = {"id": started.id}
        worker = started.worker.headers
        planted.tokens.append(started.token)
        fetched = await fetch_job_secrets_async(settings, job["id"], started.token)
        assert fetched == {
            "TEAM_ONLY": values["team"].encode(),
            "SHARED": values["pipeline"].encode(),
            "ROTATED": values["final"].encode(),
        }
        await client.patch(
            f"/api/v1/jobs/{job['id']}/steps/0", json={"status": "running"}, headers=worker
        )
        # keyd restarts: the API loads the running job's secrets into the new one.
        keyd.kill()
        keyd.start()
        assert await fetched_again(settings, job["id"], started.token) == fetched
        await client.post(
            f"/api/v1/jobs/{job['id']}/finish", json={"status": outcome}, headers=worker
        )
    for url in (team, pipeline, f"/api/v1/pipelines/{world.pipeline_id}/jobs"):
        assert (await client.get(url)).status_code == 200
    planted.values = values
    return planted


async def test_planted_values_are_in_no_file_no_log_line_and_no_response(
    real_settings: Settings, keyd_runner: KeydRunner, tmp_path: Path
):
    log_path = tmp_path / "api.log"
    responses: list[tuple[str, bytes]] = []

    async def keep(response: httpx.Response) -> None:
        responses.append((response.request.url.path, await response.aread()))

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
            async with serve_as_admin(app, database) as client:
                client.event_hooks["response"] = [keep]
                planted = await exercise(client, real_settings, keyd_runner)
            snapshot("database open")
            await database.dispose()
        finally:
            reset_logging()
    snapshot("database closed")
    assert any(where.endswith("danube.db-wal (database open)") for where, _ in stack_files)
    assert b'"message": "request"' in log_path.read_bytes()
    assert any("keyd.log" in where for where, _ in stack_files)
    for name, value in planted.values.items():
        for form, needle in encodings(value).items():
            for where, data in stack_files:
                assert needle not in data, f"{name} value found {form} in {where}"
            for _path, body in responses:
                assert needle not in body, f"{name} value found {form} in a response"


def _logs(stack_files: dict[Path, bytes]) -> dict[Path, bytes]:
    logs = {path: data for path, data in stack_files.items() if path.suffix == ".log"}
    assert {path.name for path in logs} == {"api.log", "keyd.log", "keyd-audit.log"}, logs.keys()
    return logs


async def test_a_jobs_token_is_in_no_file_and_no_response_but_its_claim(
    real_settings: Settings, keyd_runner: KeydRunner, tmp_path: Path
):
    """The token a claim hands out is in no file the stack writes (database, WAL, the
    API's and keyd's logs at trace) and in no response other than that claim's, in any
    encoding."""
    planted, stack_files, responses = await run_exercise(real_settings, keyd_runner, tmp_path)
    starts = [body for path, body in responses if path.endswith("/worker/claim")]
    assert len(starts) == len(planted.tokens) == 2
    for token in planted.tokens:
        assert any(token.encode() in body for body in starts)
        for form, needle in encodings(token).items():
            for where, data in stack_files.items():
                assert needle not in data, f"a token found {form} in {where}"
            for path, body in responses:
                if not path.endswith("/worker/claim"):
                    assert needle not in body, f"a token found {form} in the response to {path}"


async def test_a_stored_ciphertext_is_in_no_log_line_and_no_response(
    real_settings: Settings, keyd_runner: KeydRunner, tmp_path: Path
):
    """Every ciphertext the secrets table ever held (replaced and deleted ones too) is in
    neither the API's nor keyd's log at trace level (where library loggers would print
    SQL parameters) nor any response, raw, in a text encoding or as Python prints bytes."""
    planted, stack_files, responses = await run_exercise(real_settings, keyd_runner, tmp_path)
    logs = _logs(stack_files)
    for where, data in logs.items():
        # How a library logger prints a ciphertext it is handed as a SQL parameter today
        # (SQLAlchemy binds binary values as memoryviews): its bytes are hidden only by
        # that accident, so the line itself is the leak.
        assert b"<memory at 0x" not in data, f"a binary SQL parameter is printed in {where}"
    for number, ciphertext in enumerate(sorted(planted.ciphertexts)):
        for form, needle in byte_encodings(ciphertext).items():
            for where, data in logs.items():
                assert needle not in data, f"ciphertext {number} found {form} in {where}"
            for path, body in responses:
                assert needle not in body, f"ciphertext {number} found {form} in {path}"


async def run_exercise(
    settings: Settings, keyd: KeydRunner, tmp_path: Path
) -> tuple[Planted, dict[Path, bytes], list[tuple[str, bytes]]]:
    """`exercise` on the API in-process, logging at trace into tmp_path/api.log: what was
    planted, every file under tmp_path and keyd's home once the database is closed, and
    every response as (path, body)."""
    responses: list[tuple[str, bytes]] = []

    async def keep(response: httpx.Response) -> None:
        responses.append((response.request.url.path, await response.aread()))

    with (tmp_path / "api.log").open("w") as log:
        configure_logging(LogSettings(level="trace"), "danube-api", log)
        try:
            database = Database.open(settings.database)
            app = create_app(settings, database=database, keyd_watch_interval_s=0.05)
            async with serve_as_admin(app, database) as client:
                client.event_hooks["response"] = [keep]
                planted = await exercise(client, settings, keyd)
            await database.dispose()
        finally:
            reset_logging()
    return planted, files_under(tmp_path, keyd.home.root), responses
