"""Step logs: appended by the job's worker at an offset (a repeat is a no-op, a gap a 409
saying where to append, 413 past the limits), read by a member from an offset."""

from __future__ import annotations

import httpx
import pytest

from danube_api.routes.jobs import MAX_LOG_APPEND_BYTES, log_appended_json
from danube_api.schemas import LogAppended
from danube_shared.config import Settings
from danube_shared.db.engine import Database
from tests.api.conftest import assert_problem
from tests.api.worker_world import RunningJob, running_job


@pytest.fixture
async def job(client: httpx.AsyncClient, database: Database) -> RunningJob:
    return await running_job(client, database)


async def append(
    client: httpx.AsyncClient, job: RunningJob, offset: int, data: bytes, position: int = 0
) -> httpx.Response:
    return await client.post(
        f"{job.url}/steps/{position}/log",
        params={"offset": offset},
        content=data,
        headers={**job.worker.headers, "Content-Type": "application/octet-stream"},
    )


async def read(
    client: httpx.AsyncClient, job: RunningJob, offset: int = 0, position: int = 0
) -> httpx.Response:
    return await client.get(
        f"{job.url}/steps/{position}/log", params={"offset": offset}, headers=job.admin
    )


async def test_appends_at_the_stored_length_build_the_log_a_member_reads(
    client: httpx.AsyncClient, job: RunningJob
):
    first = await append(client, job, 0, b"hello ")
    assert first.status_code == 200, first.text
    assert first.json() == {"length": 6, "cancel_requested": False}
    assert (await append(client, job, 6, b"world\n")).json()["length"] == 12
    response = await read(client, job)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.content == b"hello world\n"
    assert response.headers["X-Log-Length"] == "12"
    assert response.headers["X-Log-Complete"] == "false"


async def test_a_read_from_an_offset_returns_the_rest(client: httpx.AsyncClient, job: RunningJob):
    await append(client, job, 0, b"0123456789")
    response = await read(client, job, offset=4)
    assert response.content == b"456789"
    assert response.headers["X-Log-Length"] == "10"
    past = await read(client, job, offset=10)
    assert past.content == b""


async def test_a_step_with_no_output_reads_empty_with_length_0(
    client: httpx.AsyncClient, job: RunningJob
):
    response = await read(client, job, position=1)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["X-Log-Length"] == "0"


async def test_a_repeated_append_is_a_no_op(client: httpx.AsyncClient, job: RunningJob):
    await append(client, job, 0, b"abc")
    again = await append(client, job, 0, b"abc")
    assert again.status_code == 200
    assert again.json()["length"] == 3
    overlapping = await append(client, job, 1, b"bcdef")
    assert overlapping.json()["length"] == 6
    assert (await read(client, job)).content == b"abcdef"


async def test_a_gap_is_a_409_with_the_stored_length_in_detail_and_body(
    client: httpx.AsyncClient, job: RunningJob
):
    await append(client, job, 0, b"abc")
    body = assert_problem(await append(client, job, 5, b"xyz"), 409)
    assert body["length"] == 3
    assert "3" in body["detail"]
    assert (await read(client, job)).content == b"abc"


async def test_an_append_over_1_mib_is_a_413(client: httpx.AsyncClient, job: RunningJob):
    assert_problem(await append(client, job, 0, b"x" * (MAX_LOG_APPEND_BYTES + 1)), 413)
    assert (await read(client, job)).headers["X-Log-Length"] == "0"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The smallest log limit (`api.max_log_bytes` is at least 1 KiB)."""
    return settings.model_copy(
        update={"api": settings.api.model_copy(update={"max_log_bytes": 1024})}
    )


async def test_an_append_past_max_log_bytes_is_a_413_and_stores_nothing(
    client: httpx.AsyncClient, job: RunningJob
):
    assert (await append(client, job, 0, b"x" * 1000)).status_code == 200
    assert_problem(await append(client, job, 1000, b"y" * 100), 413)
    assert (await read(client, job)).headers["X-Log-Length"] == "1000"


async def test_a_final_step_takes_appends_while_the_job_runs_and_reads_complete(
    client: httpx.AsyncClient, job: RunningJob
):
    headers = job.worker.headers
    await client.patch(f"{job.url}/steps/0", json={"status": "running"}, headers=headers)
    await client.patch(
        f"{job.url}/steps/0", json={"status": "succeeded", "exit_code": 0}, headers=headers
    )
    assert (await append(client, job, 0, b"flushed")).status_code == 200
    response = await read(client, job)
    assert response.content == b"flushed"
    assert response.headers["X-Log-Complete"] == "true"


async def test_an_append_after_the_job_ended_is_a_409(client: httpx.AsyncClient, job: RunningJob):
    await client.post(f"{job.url}/finish", json={"status": "succeeded"}, headers=job.worker.headers)
    assert_problem(await append(client, job, 0, b"late"), 409)


async def test_an_append_says_when_cancel_was_requested(client: httpx.AsyncClient, job: RunningJob):
    await client.post(f"{job.url}/cancel", headers=job.admin)
    assert (await append(client, job, 0, b"x")).json()["cancel_requested"] is True


async def test_a_negative_offset_is_a_422(client: httpx.AsyncClient, job: RunningJob):
    assert_problem(await append(client, job, -1, b"x"), 422)
    assert_problem(await read(client, job, offset=-1), 422)


@pytest.mark.parametrize("cancel_requested", [False, True])
def test_the_written_out_append_answer_is_exactly_the_models_json(cancel_requested: bool):
    for length in (0, 7, 2**53):
        model = LogAppended(length=length, cancel_requested=cancel_requested)
        written = log_appended_json(length, cancel_requested=cancel_requested)
        assert written == model.model_dump_json().encode()


async def test_an_append_answers_json(client: httpx.AsyncClient, job: RunningJob):
    response = await append(client, job, 0, b"x")
    assert response.headers["content-type"] == "application/json"
    assert LogAppended.model_validate_json(response.content).length == 1
