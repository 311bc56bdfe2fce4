"""DriverStatement: prebuilt Core statements run on the SQLite driver's cursor say and do
exactly what the Core path does, and fail as it fails."""

from __future__ import annotations

from datetime import UTC
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from danube_shared.db.driver_statements import DriverStatement, applies_to
from danube_shared.db.engine import Database
from danube_shared.db.error_translation import is_unique_violation
from danube_shared.db.ids import new_id
from danube_shared.db.job_numbers import take_job_number
from danube_shared.db.repositories import LogRepository, NewJob
from danube_shared.db.schema import Job, LogChunk, Pipeline, Status, Step
from danube_shared.db.timestamps import utcnow
from tests.db.conftest import STEPS
from tests.support.postgres import sqlite_only

_STEPS = cast(Table, Step.__table__)
_JOBS = cast(Table, Job.__table__)
_CHUNKS = cast(Table, LogChunk.__table__)
_CHUNK_COLUMNS = ("id", "step_id", "offset", "data", "created_at")
_INSERT_CHUNK = DriverStatement(insert(_CHUNKS), column_keys=_CHUNK_COLUMNS)
# A status held by the statement itself, and a bind named twice.
_RUNNING_STEP_NAMES = DriverStatement(
    select(_STEPS.c.name)
    .where(_STEPS.c.job_id == bindparam("b_job_id"), _STEPS.c.status == Status.PENDING)
    .where(_STEPS.c.position >= bindparam("b_from"), _STEPS.c.position <= bindparam("b_from") + 1)
    .order_by(_STEPS.c.position)
)


def first_step_id(session: Session, job_id: str) -> str:
    found = session.scalar(select(Step.id).where(Step.job_id == job_id, Step.position == 0))
    assert found is not None
    return found


@sqlite_only("the driver path is SQLite's")
async def test_it_sends_the_sql_sqlalchemy_renders_for_the_dialect(database: Database):
    def both(session: Session) -> tuple[str, str]:
        connection = session.connection()
        assert applies_to(connection)
        statement = insert(_CHUNKS)
        rendered = str(statement.compile(dialect=connection.dialect, column_keys=_CHUNK_COLUMNS))
        return _INSERT_CHUNK.sql(connection.dialect), rendered

    driver_sql, core_sql = await database.write(both)
    assert driver_sql == core_sql


@sqlite_only("the driver path is SQLite's")
async def test_values_bound_by_the_statement_and_repeated_names_reach_the_driver(
    database: Database, job: NewJob
):
    def names(session: Session) -> list[Any]:
        return _RUNNING_STEP_NAMES.execute(session.connection(), {"b_job_id": job.id, "b_from": 1})

    assert [row[0] for row in await database.write(names)] == ["test", "package"]


async def test_where_the_driver_path_does_not_apply_the_statement_runs_through_sqlalchemy(
    database: Database, job: NewJob
):
    """A read's connection (aiosqlite's adapter; on PostgreSQL every connection) takes
    the Core path, and answers what the driver path answers."""

    def names(session: Session) -> tuple[bool, list[Any]]:
        connection = session.connection()
        rows = _RUNNING_STEP_NAMES.execute(connection, {"b_job_id": job.id, "b_from": 1})
        return applies_to(connection), [row[0] for row in rows]

    assert await database.read(names) == (False, ["test", "package"])


@sqlite_only("the driver path is SQLite's")
async def test_reads_keep_the_core_path(database: Database):
    # A read runs on aiosqlite's adapter, whose driver connection is not `sqlite3`'s.
    assert not await database.read(lambda session: applies_to(session.connection()))
    assert await database.write(lambda session: applies_to(session.connection()))


@sqlite_only("the driver path is SQLite's")
async def test_a_timestamp_goes_through_its_column_type_and_reads_back_as_utc(
    database: Database, job: NewJob
):
    written = utcnow()

    def store(session: Session) -> str:
        chunk_id = new_id()
        _INSERT_CHUNK.execute(
            session.connection(),
            {
                "id": chunk_id,
                "step_id": first_step_id(session, job.id),
                "offset": 0,
                "data": b"out",
                "created_at": written,
            },
        )
        return chunk_id

    chunk_id = await database.write(store)
    chunk = await database.read(lambda session: session.get(LogChunk, chunk_id))
    assert chunk is not None
    assert chunk.data == b"out"
    assert chunk.created_at == written
    assert chunk.created_at.tzinfo == UTC


@sqlite_only("the driver path is SQLite's")
async def test_a_driver_error_is_wrapped_as_sqlalchemy_wraps_it_without_the_values(
    database: Database, job: NewJob
):
    secret_looking = b"not-in-any-message-" * 8

    def store_twice(session: Session) -> None:
        row = {
            "step_id": first_step_id(session, job.id),
            "offset": 0,
            "data": secret_looking,
            "created_at": utcnow(),
        }
        _INSERT_CHUNK.execute(session.connection(), {**row, "id": new_id()})
        _INSERT_CHUNK.execute(session.connection(), {**row, "id": new_id()})

    def attempt(session: Session) -> BaseException:
        savepoint = session.connection().begin_nested()
        try:
            store_twice(session)
        except sa_exc.IntegrityError as error:
            savepoint.rollback()
            return error
        raise AssertionError("the second insert at the same offset was taken")

    error = await database.write(attempt)
    assert isinstance(error, sa_exc.IntegrityError)
    assert is_unique_violation(error)
    assert b"not-in-any-message" not in str(error).encode()
    assert "not-in-any-message" not in repr(error.params)


@sqlite_only("the driver path is SQLite's")
async def test_a_column_with_a_python_default_must_be_given(database: Database, job: NewJob):
    # `log_length` has a Python-side default, which only SQLAlchemy's execution fills in.
    statement = DriverStatement(
        insert(_STEPS), column_keys=("id", "job_id", "position", "name", "command")
    )

    def insert_step(session: Session) -> None:
        statement.execute(
            session.connection(),
            {"id": new_id(), "job_id": job.id, "position": 9, "name": "x", "command": "y"},
        )

    with pytest.raises(TypeError, match="Python-side default"):
        await database.write(insert_step)


async def test_a_returned_json_column_is_decoded_as_its_type_decodes_it(
    database: Database, pipeline: Pipeline
):
    stored = await database.read(lambda session: session.get(Pipeline, pipeline.id))
    assert stored is not None
    taken = await database.write(lambda session: take_job_number(session.connection(), pipeline.id))
    assert taken is not None
    assert taken.steps == stored.steps
    assert [step["name"] for step in taken.steps] == [step["name"] for step in STEPS]


async def test_an_append_at_the_end_moves_the_length_and_stores_the_chunk(
    database: Database, job: NewJob
):
    lengths = [
        await database.write(
            lambda session, offset=offset: LogRepository(session).append_at(
                job.id, 0, offset, b"12345", max_bytes=1 << 20
            )
        )
        for offset in (0, 5)
    ]
    assert lengths == [5, 10]
    stored = await database.read(
        lambda session: session.execute(
            select(LogChunk.offset, LogChunk.data)
            .join(Step, Step.id == LogChunk.step_id)
            .where(Step.job_id == job.id)
            .order_by(LogChunk.offset)
        ).all()
    )
    assert [tuple(row) for row in stored] == [(0, b"12345"), (5, b"12345")]
    length = await database.read(
        lambda session: session.scalar(
            select(_STEPS.c.log_length).where(_STEPS.c.job_id == job.id, _STEPS.c.position == 0)
        )
    )
    assert length == 10


async def test_a_created_job_reads_back_as_it_was_returned(database: Database, job: NewJob):
    stored = await database.read(
        lambda session: session.execute(
            select(_JOBS.c.status, _JOBS.c.cancel_requested, _JOBS.c.number).where(
                _JOBS.c.id == job.id
            )
        ).one()
    )
    assert tuple(stored) == (Status.PENDING, False, job.number)
    steps = await database.read(
        lambda session: session.execute(
            select(_STEPS.c.id, _STEPS.c.timeout_s, _STEPS.c.log_length, _STEPS.c.status)
            .where(_STEPS.c.job_id == job.id)
            .order_by(_STEPS.c.position)
        ).all()
    )
    assert [tuple(row) for row in steps] == [
        (step.id, step.timeout_s, 0, Status.PENDING) for step in job.steps
    ]
