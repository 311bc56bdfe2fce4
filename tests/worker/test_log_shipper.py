"""The log shipper against the fake API's log route over real HTTP: masked bytes only,
in order, exactly once, through lost answers, 503s and 409s (DESIGN sections 7 and 12.3)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from danube_worker.api_client import ApiClient
from danube_worker.log_shipper import FLUSH_BYTES, LogRejected, LogShipper, stored_length
from danube_worker.masking import SecretMasker
from tests.worker.fake_api import FakeApi, FakeJob

HANG_GUARD_S = 10.0
SECRET = b"s3cr3t-value-of-the-job"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi() as fake:
        yield fake


@pytest.fixture
async def running(api: FakeApi) -> AsyncIterator[tuple[ApiClient, FakeJob]]:
    """A job of two steps the client has claimed."""
    job = api.queue_job([{"name": "a", "command": "true"}, {"name": "b", "command": "true"}])
    client = ApiClient(api.url, api.worker_token)
    try:
        claim = await client.claim(0)
        assert claim is not None
        assert claim.job_id == job.id
        yield client, job
    finally:
        client.close()


def shipper(
    client: ApiClient, job: FakeJob, on_cancel: Callable[[], None] = lambda: None
) -> LogShipper:
    return LogShipper(
        client,
        job_id=job.id,
        position=0,
        stream=SecretMasker({"TOKEN": SECRET}).stream(),
        on_cancel_requested=on_cancel,
    )


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {HANG_GUARD_S} s")
        await asyncio.sleep(0.02)


async def test_output_is_masked_before_it_is_sent(api: FakeApi, running: tuple[ApiClient, FakeJob]):
    client, job = running
    async with shipper(client, job) as log:
        for piece in (b"token=s3cr3t-", b"value-of-", b"the-job done\n"):
            await log.feed(piece)
    assert job.log_of(0) == b"token=*** done\n"
    assert SECRET not in api.everything_received()


async def test_output_is_shipped_while_the_step_runs_without_64_kib_waiting(
    running: tuple[ApiClient, FakeJob],
):
    """Only the bytes no later output can turn into a secret are settled: the stream
    holds back the longest pattern's length minus one until the step ends."""
    client, job = running
    data = b"early line\n" * 10
    async with shipper(client, job) as log:
        await log.feed(data)
        await eventually(lambda: len(job.log_of(0)) > 0, "periodic flush")
        assert data.startswith(job.log_of(0))
    assert job.log_of(0) == data


async def test_64_kib_of_output_is_shipped_without_waiting_for_the_clock(
    api: FakeApi, running: tuple[ApiClient, FakeJob]
):
    client, job = running
    data = bytes(range(256)) * (3 * FLUSH_BYTES // 256)
    async with shipper(client, job) as log:
        for start in range(0, len(data), 4096):
            await log.feed(data[start : start + 4096])
        assert len(api.appends(job, 0)) >= 2  # before the exit's final flush
    assert job.log_of(0) == data
    offsets = [offset for offset, _ in api.appends(job, 0)]
    assert offsets == sorted(offsets)


async def test_an_append_whose_answer_was_lost_is_sent_again_and_stored_once(
    api: FakeApi, running: tuple[ApiClient, FakeJob]
):
    client, job = running
    api.lose_log_answers(1)
    async with shipper(client, job) as log:
        await log.feed(b"hello\n")
    assert job.log_of(0) == b"hello\n"
    assert [offset for offset, _ in api.appends(job, 0)] == [0, 0]


async def test_a_409_naming_a_length_within_the_piece_resumes_from_that_length(
    api: FakeApi, running: tuple[ApiClient, FakeJob]
):
    client, job = running
    api.strict_repeats = True
    api.lose_log_answers(1)
    first = b"first\n" * 20
    async with shipper(client, job) as log:
        await log.feed(first)
        await log.flush()
        stored = len(job.log_of(0))
        assert 0 < stored < len(first)  # the resync dropped the repeat, kept the rest
        await log.feed(b"second\n")
    assert job.log_of(0) == first + b"second\n"
    assert [offset for offset, _ in api.appends(job, 0)] == [0, 0, stored]


async def test_a_gap_the_worker_did_not_make_is_fatal(
    api: FakeApi, running: tuple[ApiClient, FakeJob]
):
    client, job = running
    job.steps[0].log += b"0123456789 written by someone else\n"
    with pytest.raises(LogRejected):
        async with shipper(client, job) as log:
            await log.feed(b"hi\n")
    assert job.log_of(0) == b"0123456789 written by someone else\n"


async def test_cancel_requested_in_an_append_s_answer_is_passed_on(
    api: FakeApi, running: tuple[ApiClient, FakeJob]
):
    client, job = running
    seen: list[bool] = []
    api.request_cancel(job)
    async with shipper(client, job, lambda: seen.append(True)) as log:
        await log.feed(b"x\n")
    assert seen


def test_the_stored_length_is_read_from_the_problem_s_member_or_its_detail():
    assert stored_length({"length": 12, "detail": "length 99"}) == 12
    assert stored_length({"detail": "offset 40 does not follow the stored length 17"}) == 17
    assert stored_length({"detail": "gap"}) is None
