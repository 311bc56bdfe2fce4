"""`danube logs JOB_ID [--follow]` against the API served by uvicorn on a real port: each
step's output after its header, in order; following until the job ends."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from danube_cli.job_logs import run_logs
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from tests.api.conftest import serve_as_admin
from tests.api.worker_world import RunningJob, running_job
from tests.support.isolation import free_port
from tests.support.postgres import TEST_DATABASE_URL_VARIABLE

HANG_GUARD_S = 60


@contextlib.asynccontextmanager
async def listening(app: FastAPI, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, HANG_GUARD_S)


@pytest.fixture(autouse=True)
def _hide_test_database_variable(
    monkeypatch: pytest.MonkeyPatch, database_settings: DatabaseSettings
) -> None:
    """The CLI refuses any DANUBE_ variable that is not a config key; the test database's
    URL was read already (`database_settings`), so the command need not see it."""
    del database_settings
    monkeypatch.delenv(TEST_DATABASE_URL_VARIABLE, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    (tmp_path / "danube.toml").write_text(f"[api]\nport = {port}\n")
    return tmp_path, port


async def logs_of(home: Path, job_id: str, token: str, *, follow: bool) -> tuple[int, bytes]:
    out = io.BytesIO()
    code = await asyncio.to_thread(
        run_logs, None, home, job_id, follow=follow, out=out, environ={"DANUBE_TOKEN": token}
    )
    return code, out.getvalue()


async def test_logs_prints_each_step_after_its_header(
    app: FastAPI, database: Database, home: tuple[Path, int]
):
    directory, port = home
    async with serve_as_admin(app, database) as client, listening(app, port):
        job: RunningJob = await running_job(client, database)
        headers = job.worker.headers
        for position, text in ((0, b"compiling\n"), (1, b"testing\n")):
            response = await client.post(
                f"{job.url}/steps/{position}/log",
                params={"offset": 0},
                content=text,
                headers=headers,
            )
            assert response.status_code == 200
        admin_token = job.admin["Authorization"].removeprefix("Bearer ")
        code, printed = await asyncio.wait_for(
            logs_of(directory, job.claimed.id, admin_token, follow=False), HANG_GUARD_S
        )
    assert code == 0
    assert printed == (b"=== step 0: compile ===\ncompiling\n=== step 1: test ===\ntesting\n")


async def test_logs_follow_prints_until_the_job_ends(
    app: FastAPI, database: Database, home: tuple[Path, int]
):
    directory, port = home
    async with serve_as_admin(app, database) as client, listening(app, port):
        job = await running_job(client, database)
        headers = job.worker.headers
        admin_token = job.admin["Authorization"].removeprefix("Bearer ")
        following = asyncio.create_task(
            logs_of(directory, job.claimed.id, admin_token, follow=True)
        )
        await client.patch(f"{job.url}/steps/0", json={"status": "running"}, headers=headers)
        for offset, text in ((0, b"one\n"), (4, b"two\n")):
            await client.post(
                f"{job.url}/steps/0/log", params={"offset": offset}, content=text, headers=headers
            )
            await asyncio.sleep(0.3)
        assert not following.done()
        await client.patch(
            f"{job.url}/steps/0", json={"status": "succeeded", "exit_code": 0}, headers=headers
        )
        await client.post(f"{job.url}/finish", json={"status": "succeeded"}, headers=headers)
        code, printed = await asyncio.wait_for(following, HANG_GUARD_S)
    assert code == 0
    assert printed == b"=== step 0: compile ===\none\ntwo\n=== step 1: test ===\n"


async def test_logs_without_a_token_says_so(tmp_path: Path, database: Database):
    del database
    out = io.BytesIO()
    code = await asyncio.to_thread(
        run_logs, None, tmp_path, "job", follow=False, out=out, environ={}
    )
    assert code == 1
    assert out.getvalue() == b""
