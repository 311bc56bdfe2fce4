"""The endpoints the job page's script polls: statuses as JSON and a step's log from a
byte offset, with the session cookie, in bounded pieces."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy.orm import Session

from danube_api.web.live import MAX_LOG_SLICE
from danube_shared.db.engine import Database
from danube_shared.db.repositories import JobRepository, LogRepository
from danube_shared.db.schema import Status
from danube_shared.db.timestamps import utcnow
from tests.web.conftest import World, sign_in

MAX_LOG = 64 * 1024 * 1024


def _start_with_log(session: Session, pipeline_id: str, log: bytes) -> str:
    jobs = JobRepository(session)
    new = jobs.create(pipeline_id)
    jobs.start(new.id, token_sha256=b"\x01" * 32, secrets_expire_at=utcnow() + timedelta(hours=1))
    jobs.update_step(new.id, 0, status=Status.RUNNING)
    LogRepository(session).append(new.steps[0].id, 0, log, max_bytes=MAX_LOG)
    return new.id


def _append(session: Session, job_id: str, offset: int, data: bytes) -> None:
    step = JobRepository(session).get(job_id).steps[0]
    LogRepository(session).append(step.id, offset, data, max_bytes=MAX_LOG)


def _finish(session: Session, job_id: str) -> None:
    jobs = JobRepository(session)
    jobs.update_step(job_id, 0, status=Status.SUCCEEDED, exit_code=0)
    jobs.finish(job_id, Status.SUCCEEDED)


async def test_status_json_reports_the_job_and_each_step(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    job_id = await database.write(_start_with_log, world.build_id, b"hello\n")
    await sign_in(client, world.member.token)
    response = await client.get(f"/jobs/{job_id}/status.json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "running"
    assert body["final"] is False
    assert [(step["status"], step["log_length"]) for step in body["steps"]] == [
        ("running", 6),
        ("pending", 0),
    ]
    await database.write(_finish, job_id)
    body = (await client.get(f"/jobs/{job_id}/status.json")).json()
    assert (body["status"], body["final"], body["steps"][0]["exit_code"]) == ("succeeded", True, 0)


async def test_the_log_answers_only_the_bytes_after_the_offset(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    job_id = await database.write(_start_with_log, world.build_id, b"line one\n")
    await sign_in(client, world.member.token)
    first = await client.get(f"/jobs/{job_id}/steps/0/log?offset=0")
    assert first.content == b"line one\n"
    assert first.headers["x-log-length"] == "9"
    assert first.headers["x-log-complete"] == "false"
    await database.write(_append, job_id, 9, b"line two\n")
    second = await client.get(f"/jobs/{job_id}/steps/0/log?offset=9")
    assert second.content == b"line two\n"
    assert second.headers["x-log-length"] == "18"
    nothing = await client.get(f"/jobs/{job_id}/steps/0/log?offset=18")
    assert nothing.content == b""


async def test_a_long_log_comes_in_pieces_of_at_most_the_cap(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    log = bytes(range(256)) * (3 * MAX_LOG_SLICE // 256 + 7)
    job_id = await database.write(_start_with_log, world.build_id, log)
    await sign_in(client, world.member.token)
    received = b""
    fetches = 0
    while len(received) < len(log):
        piece = await client.get(f"/jobs/{job_id}/steps/0/log?offset={len(received)}")
        assert 0 < len(piece.content) <= MAX_LOG_SLICE
        assert piece.headers["x-log-length"] == str(len(log))
        received += piece.content
        fetches += 1
    assert received == log
    assert fetches == 4


async def test_the_log_is_complete_once_the_job_is_final(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    job_id = await database.write(_start_with_log, world.build_id, b"done\n")
    await database.write(_finish, job_id)
    await sign_in(client, world.member.token)
    whole = await client.get(f"/jobs/{job_id}/steps/0/log?offset=0")
    assert whole.headers["x-log-complete"] == "true"
    assert whole.content == b"done\n"


async def test_a_step_that_does_not_exist_answers_404(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    job_id = await database.write(_start_with_log, world.build_id, b"x")
    await sign_in(client, world.member.token)
    assert (await client.get(f"/jobs/{job_id}/steps/9/log?offset=0")).status_code == 404
    assert (await client.get(f"/jobs/{job_id}/steps/0/log?offset=-1")).status_code == 422


async def test_the_live_endpoints_need_a_session_not_a_bearer_token(
    client: httpx.AsyncClient, world: World, database: Database
) -> None:
    job_id = await database.write(_start_with_log, world.build_id, b"x")
    bearer = {"Authorization": f"Bearer {world.member.token}"}
    for path in (f"/jobs/{job_id}/status.json", f"/jobs/{job_id}/steps/0/log?offset=0"):
        response = await client.get(path, headers=bearer)
        assert response.status_code == 401, path
        assert response.headers["content-type"] == "application/problem+json"
