"""LogRepository: appends at an offset (idempotent, no gaps, bounded), reads from one."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import LogGap, LogRepository, LogSlice, LogTooLarge
from danube_shared.db.schema import Job, LogChunk, Step
from danube_shared.errors import NotFound

LIMIT = 1 << 20


@pytest.fixture
async def step_id(database: Database, job: Job) -> str:
    found = await database.read(
        lambda session: session.scalar(
            select(Step.id).where(Step.job_id == job.id, Step.position == 0)
        )
    )
    assert found is not None
    return found


async def append(database: Database, step_id: str, offset: int, data: bytes) -> int:
    return await database.write(
        lambda session: LogRepository(session).append(step_id, offset, data, max_bytes=LIMIT),
    )


async def read(database: Database, step_id: str, offset: int, max_bytes: int = LIMIT) -> LogSlice:
    return await database.read(
        lambda session: LogRepository(session).read(step_id, offset, max_bytes=max_bytes),
    )


async def test_appends_at_the_end_build_the_log_in_order(database: Database, step_id: str):
    lengths = [
        await append(database, step_id, 0, b"hello "),
        await append(database, step_id, 6, b"world"),
        await append(database, step_id, 11, b"\n"),
    ]
    assert lengths == [6, 11, 12]
    assert await read(database, step_id, 0) == LogSlice(data=b"hello world\n", length=12)


async def test_a_step_without_output_reads_empty_with_length_0(database: Database, step_id: str):
    assert await read(database, step_id, 0) == LogSlice(data=b"", length=0)


async def test_a_repeated_append_stores_nothing_more(database: Database, step_id: str):
    await append(database, step_id, 0, b"hello ")
    assert await append(database, step_id, 0, b"hello ") == 6
    assert await append(database, step_id, 2, b"llo") == 6
    assert await read(database, step_id, 0) == LogSlice(data=b"hello ", length=6)
    chunks = await database.read(
        lambda session: session.scalar(select(func.count()).select_from(LogChunk))
    )
    assert chunks == 1


async def test_an_append_that_overlaps_the_end_stores_only_its_new_bytes(
    database: Database, step_id: str
):
    await append(database, step_id, 0, b"hello ")
    assert await append(database, step_id, 3, b"lo world") == 11
    assert (await read(database, step_id, 0)).data == b"hello world"


async def test_an_append_past_the_end_is_a_gap_that_names_the_stored_length(
    database: Database, step_id: str
):
    await append(database, step_id, 0, b"hello")
    with pytest.raises(LogGap, match="has 5 bytes of log") as raised:
        await append(database, step_id, 6, b"world")
    assert raised.value.length == 5
    assert await read(database, step_id, 0) == LogSlice(data=b"hello", length=5)


async def test_an_append_past_the_limit_is_refused_and_stores_nothing(
    database: Database, step_id: str
):
    def fill(session: Session) -> int:
        return LogRepository(session).append(step_id, 0, b"x" * 10, max_bytes=12)

    def overflow(session: Session) -> int:
        return LogRepository(session).append(step_id, 10, b"yyy", max_bytes=12)

    await database.write(fill)
    with pytest.raises(LogTooLarge, match="limit of 12 bytes"):
        await database.write(overflow)
    assert await read(database, step_id, 0) == LogSlice(data=b"x" * 10, length=10)


async def test_an_unknown_step_is_not_found(database: Database):
    missing = new_id()
    with pytest.raises(NotFound, match=f"step {missing} not found"):
        await append(database, missing, 0, b"x")
    with pytest.raises(NotFound, match=f"step {missing} not found"):
        await read(database, missing, 0)


async def test_logs_of_different_steps_are_separate(database: Database, job: Job):
    first, second = await database.read(
        lambda session: session.scalars(
            select(Step.id).where(Step.job_id == job.id).order_by(Step.position)
        ).all()[:2]
    )
    await append(database, first, 0, b"one")
    await append(database, second, 0, b"two!")
    assert [await read(database, step, 0) for step in (first, second)] == [
        LogSlice(data=b"one", length=3),
        LogSlice(data=b"two!", length=4),
    ]


async def test_a_read_from_any_offset_of_any_size_is_that_slice_of_the_whole_log(
    database: Database, step_id: str
):
    """Every (offset, size) pair against chunks of uneven sizes, in one read."""
    pieces = [b"a", b"bcdef", b"ghi", b"jklmnop", b"q"]
    position = 0
    for piece in pieces:
        await append(database, step_id, position, piece)
        position += len(piece)
    whole = b"".join(pieces)

    def read_every_slice(session: Session) -> dict[tuple[int, int], LogSlice]:
        logs = LogRepository(session)
        return {
            (offset, size): logs.read(step_id, offset, max_bytes=size)
            for offset in range(len(whole) + 2)
            for size in range(len(whole) + 2)
        }

    slices = await database.read(read_every_slice)
    assert slices == {
        (offset, size): LogSlice(data=whole[offset : offset + size], length=len(whole))
        for offset, size in slices
    }


async def test_a_rolled_back_append_leaves_neither_its_chunk_nor_its_length(
    database: Database, step_id: str
):
    class Abandon(Exception):
        pass

    def append_then_fail(session: Session) -> None:
        LogRepository(session).append(step_id, 0, b"lost", max_bytes=LIMIT)
        raise Abandon

    with pytest.raises(Abandon):
        await database.write(append_then_fail)
    assert await read(database, step_id, 0) == LogSlice(data=b"", length=0)
    assert await append(database, step_id, 0, b"kept") == 4


# `append_at`: the worker's path, by job and position, with a two-statement fast path.


async def append_at(
    database: Database, job: Job, position: int, offset: int, data: bytes, *, limit: int = LIMIT
) -> int:
    return await database.write(
        lambda session: LogRepository(session).append_at(
            job.id, position, offset, data, max_bytes=limit
        ),
    )


async def test_append_at_builds_the_log_of_the_step_at_that_position(
    database: Database, job: Job, step_id: str
):
    assert await append_at(database, job, 0, 0, b"hello ") == 6
    assert await append_at(database, job, 0, 6, b"world") == 11
    assert await read(database, step_id, 0) == LogSlice(data=b"hello world", length=11)


async def test_append_at_takes_a_retry_as_append_does(database: Database, job: Job, step_id: str):
    await append_at(database, job, 0, 0, b"hello ")
    assert await append_at(database, job, 0, 0, b"hello ") == 6
    assert await append_at(database, job, 0, 3, b"lo world") == 11
    assert await read(database, step_id, 0) == LogSlice(data=b"hello world", length=11)


async def test_append_at_refuses_a_gap_and_the_limit_and_stores_nothing(
    database: Database, job: Job, step_id: str
):
    await append_at(database, job, 0, 0, b"x" * 10, limit=12)
    with pytest.raises(LogGap) as raised:
        await append_at(database, job, 0, 11, b"y", limit=12)
    assert raised.value.length == 10
    with pytest.raises(LogTooLarge, match="limit of 12 bytes"):
        await append_at(database, job, 0, 10, b"yyy", limit=12)
    assert await read(database, step_id, 0) == LogSlice(data=b"x" * 10, length=10)


async def test_append_at_a_position_the_job_lacks_is_not_found(database: Database, job: Job):
    with pytest.raises(NotFound, match=f"job {job.id} has no step at position 7"):
        await append_at(database, job, 7, 0, b"x")
