"""JobRepository: numbering, steps copied from the pipeline, status rules."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import (
    JobDraft,
    JobRepository,
    NewJob,
    NewStep,
    PipelineRepository,
    insert_job,
)
from danube_shared.db.schema import STEP_TIMEOUT_DEFAULT_S, Job, Pipeline, Status, Team
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, InvalidInput, NotFound
from tests.db.conftest import STEPS

TOKEN_SHA256 = hashlib.sha256(b"job-token").digest()


async def start(database: Database, job: Job | NewJob) -> Job:
    def writes(session: Session) -> Any:
        return JobRepository(session).start(
            job.id, token_sha256=TOKEN_SHA256, secrets_expire_at=utcnow() + timedelta(hours=1)
        )

    return await database.write(writes)


async def finish(database: Database, job: Job | NewJob, status: Status) -> Job:
    return await database.write(lambda session: JobRepository(session).finish(job.id, status))


async def test_a_new_job_is_pending_with_a_pending_step_per_definition(
    database: Database, job: NewJob
):
    stored = await database.read(lambda session: JobRepository(session).get(job.id))
    assert stored.status == Status.PENDING
    assert stored.number == 1
    assert [(s.position, s.name, s.command, s.status) for s in stored.steps] == [
        (position, step["name"], step["command"], Status.PENDING)
        for position, step in enumerate(STEPS)
    ]
    assert all(s.exit_code is None and s.started_at is None for s in stored.steps)


async def test_jobs_are_numbered_per_pipeline(database: Database, pipeline: Pipeline):
    def writes(session: Session) -> Any:
        other = PipelineRepository(session).create(pipeline.team_id, name="other", steps=STEPS)
        jobs = JobRepository(session)
        numbers = [
            (jobs.create(pipeline_id)).number
            for pipeline_id in (pipeline.id, pipeline.id, other.id, pipeline.id)
        ]
        return (numbers,)

    (numbers,) = await database.write(writes)
    assert numbers == [1, 2, 1, 3]


async def test_a_job_keeps_the_steps_its_pipeline_had_when_it_was_made(
    database: Database, pipeline: Pipeline, job: NewJob
):
    def writes(session: Session) -> Any:
        stored = PipelineRepository(session).get(pipeline.id)
        stored.steps = [{"name": "changed", "command": "false"}]

    await database.write(writes)

    def reads(session: Session) -> Any:
        assert [s.name for s in (JobRepository(session).get(job.id)).steps] == [
            step["name"] for step in STEPS
        ]

    await database.read(reads)


async def test_a_job_of_an_unknown_pipeline_is_not_found(database: Database):
    with pytest.raises(NotFound, match="pipeline"):
        await database.write(lambda session: JobRepository(session).create(new_id()))


async def test_a_drafted_job_is_stored_as_create_stores_one(database: Database, pipeline: Pipeline):
    created = await database.write(lambda session: JobRepository(session).create(pipeline.id))
    steps = await database.read(lambda session: PipelineRepository(session).steps_of(pipeline.id))
    draft = JobDraft.of(pipeline.id, steps)
    number = await database.write_on_connection(insert_job, draft)
    drafted = draft.inserted(number)
    assert number == created.number + 1
    stored = await database.read(lambda session: JobRepository(session).get(drafted.id))
    assert (stored.pipeline_id, stored.number, stored.status, stored.created_at) == (
        pipeline.id,
        number,
        Status.PENDING,
        drafted.created_at,
    )
    assert [(s.id, s.position, s.name, s.command, s.timeout_s) for s in stored.steps] == [
        (s.id, s.position, s.name, s.command, s.timeout_s) for s in drafted.steps
    ]
    assert [(s.name, s.command, s.timeout_s) for s in drafted.steps] == [
        (s.name, s.command, s.timeout_s) for s in created.steps
    ]


async def test_a_drafted_job_of_an_unknown_pipeline_is_not_found_and_writes_nothing(
    database: Database, pipeline: Pipeline
):
    draft = JobDraft.of(new_id(), STEPS)
    with pytest.raises(NotFound, match=f"pipeline {draft.pipeline_id} not found"):
        await database.write_on_connection(insert_job, draft)
    with pytest.raises(NotFound):
        await database.read(lambda session: JobRepository(session).get(draft.job["id"]))


async def test_a_connection_unit_that_raises_writes_nothing(database: Database, pipeline: Pipeline):
    draft = JobDraft.of(pipeline.id, STEPS)

    def inserts_then_fails(connection: Connection) -> None:
        insert_job(connection, draft)
        raise RuntimeError("after the insert")

    with pytest.raises(RuntimeError, match="after the insert"):
        await database.write_on_connection(inserts_then_fails)
    with pytest.raises(NotFound):
        await database.read(lambda session: JobRepository(session).get(draft.job["id"]))
    # The number went back with the rollback.
    again = await database.write_on_connection(insert_job, JobDraft.of(pipeline.id, STEPS))
    assert again == 1


async def test_the_steps_of_an_unknown_pipeline_are_not_found(database: Database):
    missing = new_id()
    with pytest.raises(NotFound, match=f"pipeline {missing} not found"):
        await database.read(lambda session: PipelineRepository(session).steps_of(missing))


async def test_an_unknown_job_is_not_found(database: Database):
    missing = new_id()
    with pytest.raises(NotFound, match=f"job {missing} not found"):
        await database.read(lambda session: JobRepository(session).get(missing))


async def test_a_pipelines_jobs_are_listed_newest_first_with_their_steps(
    database: Database, pipeline: Pipeline
):
    def writes(session: Session) -> Any:
        for _ in range(5):
            JobRepository(session).create(pipeline.id)

    await database.write(writes)
    page = await database.read(
        lambda session: JobRepository(session).list_for_pipeline(pipeline.id, limit=2, offset=1)
    )
    assert [job.number for job in page] == [4, 3]
    assert all(len(job.steps) == len(STEPS) for job in page)


async def test_listing_the_jobs_of_an_unknown_pipeline_is_not_found(database: Database):
    with pytest.raises(NotFound):
        await database.read(lambda session: JobRepository(session).list_for_pipeline(new_id()))


async def test_starting_a_job_records_its_start_token_hash_and_secrets_expiry(
    database: Database, job: NewJob
):
    before = utcnow()
    expires = utcnow() + timedelta(minutes=30)

    def writes(session: Session) -> Any:
        started = JobRepository(session).start(
            job.id, token_sha256=TOKEN_SHA256, secrets_expire_at=expires
        )
        return (started,)

    (started,) = await database.write(writes)
    assert len(started.steps) == len(STEPS)  # returned ready to render
    stored = await database.read(lambda session: JobRepository(session).get(job.id))
    assert stored.status == Status.RUNNING
    assert stored.started_at is not None
    assert before <= stored.started_at <= utcnow()
    assert stored.token_sha256 == TOKEN_SHA256
    assert stored.secrets_expire_at == expires
    assert stored.finished_at is None


async def test_a_token_hash_of_the_wrong_size_is_invalid_input(database: Database, job: NewJob):
    def writes(session: Session) -> Any:
        JobRepository(session).start(job.id, token_sha256=b"short", secrets_expire_at=utcnow())

    with pytest.raises(InvalidInput, match="32 bytes"):
        await database.write(writes)


@pytest.mark.parametrize("final", [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED])
async def test_finishing_a_running_job_records_the_end_and_forgets_the_token(
    database: Database, job: NewJob, final: Status
):
    await start(database, job)
    await finish(database, job, final)
    stored = await database.read(lambda session: JobRepository(session).get(job.id))
    assert stored.status == final
    assert stored.finished_at is not None
    assert stored.started_at is not None
    assert stored.finished_at >= stored.started_at
    assert (stored.token_sha256, stored.secrets_expire_at) == (None, None)


async def test_a_pending_job_can_be_cancelled(database: Database, job: NewJob):
    cancelled = await finish(database, job, Status.CANCELLED)
    assert cancelled.status == Status.CANCELLED
    assert cancelled.started_at is None
    assert cancelled.finished_at is not None


@pytest.mark.parametrize("final", [Status.SUCCEEDED, Status.FAILED])
async def test_a_pending_job_cannot_succeed_or_fail(database: Database, job: NewJob, final: Status):
    with pytest.raises(Conflict, match=f"is pending; it cannot become {final}"):
        await finish(database, job, final)


async def test_a_running_job_cannot_start_again(database: Database, job: NewJob):
    await start(database, job)
    with pytest.raises(Conflict, match="is running; it cannot become running"):
        await start(database, job)


@pytest.mark.parametrize("final", [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED])
async def test_a_finished_job_changes_no_more(database: Database, job: NewJob, final: Status):
    await start(database, job)
    await finish(database, job, final)
    with pytest.raises(Conflict, match=f"is {final}; it cannot become running"):
        await start(database, job)
    with pytest.raises(Conflict, match=f"is {final}; it cannot become cancelled"):
        await finish(database, job, Status.CANCELLED)


@pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING])
async def test_finishing_with_a_status_that_is_not_final_is_invalid_input(
    database: Database, job: NewJob, status: Status
):
    with pytest.raises(InvalidInput):
        await finish(database, job, status)


async def test_running_jobs_are_listed_with_token_hash_and_expiry(
    database: Database, pipeline: Pipeline
):
    jobs = await database.write(
        lambda session: [JobRepository(session).create(pipeline.id) for _ in range(4)]
    )
    for job in jobs[:3]:
        await start(database, job)
    await finish(database, jobs[2], Status.SUCCEEDED)
    running = await database.read(lambda session: JobRepository(session).list_running())
    assert [job.id for job in running] == [jobs[0].id, jobs[1].id]
    assert all(job.token_sha256 == TOKEN_SHA256 for job in running)
    assert all(job.secrets_expire_at is not None for job in running)


async def test_a_step_runs_then_finishes_with_its_exit_code(database: Database, job: NewJob):
    await start(database, job)
    running = await database.write(
        lambda session: JobRepository(session).update_step(job.id, 1, status=Status.RUNNING)
    )
    assert running.started_at is not None
    assert running.finished_at is None
    await database.write(
        lambda session: JobRepository(session).update_step(
            job.id, 1, status=Status.FAILED, exit_code=2
        )
    )
    steps = await database.read(lambda session: (JobRepository(session).get(job.id)).steps)
    assert [(s.status, s.exit_code) for s in steps] == [
        (Status.PENDING, None),
        (Status.FAILED, 2),
        (Status.PENDING, None),
    ]
    assert steps[1].finished_at is not None
    assert steps[1].started_at is not None
    assert steps[1].finished_at >= steps[1].started_at


async def test_a_step_may_be_reported_finished_without_having_been_running(
    database: Database, job: NewJob
):
    await start(database, job)

    def writes(session: Session) -> Any:
        step = JobRepository(session).update_step(job.id, 0, status=Status.SUCCEEDED, exit_code=0)
        return (step,)

    (step,) = await database.write(writes)
    assert (step.status, step.exit_code, step.started_at) == (Status.SUCCEEDED, 0, None)


async def test_a_finished_step_changes_no_more(database: Database, job: NewJob):
    await start(database, job)
    await database.write(
        lambda session: JobRepository(session).update_step(
            job.id, 0, status=Status.SUCCEEDED, exit_code=0
        )
    )
    with pytest.raises(Conflict, match=r"step 0 of job .* is succeeded; it cannot become running"):
        await database.write(
            lambda session: JobRepository(session).update_step(job.id, 0, status=Status.RUNNING)
        )


async def test_steps_change_only_while_their_job_runs(database: Database, job: NewJob):
    with pytest.raises(Conflict, match="is pending; its steps change only while it is running"):
        await database.write(
            lambda session: JobRepository(session).update_step(job.id, 0, status=Status.RUNNING)
        )
    await start(database, job)
    await finish(database, job, Status.CANCELLED)
    with pytest.raises(Conflict, match="is cancelled"):
        await database.write(
            lambda session: JobRepository(session).update_step(job.id, 0, status=Status.RUNNING)
        )


async def test_an_exit_code_without_a_final_status_is_invalid_input(
    database: Database, job: NewJob
):
    await start(database, job)
    with pytest.raises(InvalidInput):
        await database.write(
            lambda session: JobRepository(session).update_step(
                job.id, 0, status=Status.RUNNING, exit_code=0
            )
        )


async def test_a_step_position_the_job_does_not_have_is_not_found(database: Database, job: NewJob):
    await start(database, job)
    with pytest.raises(NotFound, match="no step at position 3"):
        await database.write(
            lambda session: JobRepository(session).update_step(
                job.id, len(STEPS), status=Status.RUNNING
            )
        )


async def test_the_job_create_returns_holds_what_was_stored(database: Database, pipeline: Pipeline):
    """`create` inserts in Core and builds its answer from the rows it inserted: every
    field of the answer equals what a read of the job finds."""
    created = await database.write(lambda session: JobRepository(session).create(pipeline.id))
    stored = await database.read(lambda session: JobRepository(session).get(created.id))
    job_fields = [field.name for field in dataclasses.fields(NewJob) if field.name != "steps"]
    step_fields = [field.name for field in dataclasses.fields(NewStep)]
    assert {name: getattr(created, name) for name in job_fields} == {
        name: getattr(stored, name) for name in job_fields
    }
    assert [{name: getattr(step, name) for name in step_fields} for step in created.steps] == [
        {name: getattr(step, name) for name in step_fields} for step in stored.steps
    ]


async def test_each_step_gets_its_definitions_timeout(database: Database, job: NewJob):
    stored = await database.read(lambda session: JobRepository(session).get(job.id))
    expected = [step.get("timeout_s", STEP_TIMEOUT_DEFAULT_S) for step in STEPS]
    assert expected == [STEP_TIMEOUT_DEFAULT_S, 600, STEP_TIMEOUT_DEFAULT_S]
    assert [step.timeout_s for step in stored.steps] == expected
    assert [step.timeout_s for step in job.steps] == expected
    assert [step.log_length for step in stored.steps] == [0, 0, 0]


async def test_a_job_takes_its_number_from_the_pipelines_counter(
    database: Database, pipeline: Pipeline
):
    """The number is the counter's, not one past the highest job: a counter moved ahead
    (as after jobs were deleted) is where numbering continues."""
    await database.write(
        lambda session: session.execute(
            update(Pipeline).where(Pipeline.id == pipeline.id).values(next_job_number=10)
        )
    )
    created = await database.write(lambda session: JobRepository(session).create(pipeline.id))
    next_number = await database.read(
        lambda session: session.get_one(Pipeline, pipeline.id).next_job_number
    )
    assert (created.number, next_number) == (10, 11)


async def test_a_job_of_an_unknown_pipeline_is_not_found_and_nothing_is_stored(
    database: Database,
):
    missing = new_id()
    with pytest.raises(NotFound, match=f"pipeline {missing} not found"):
        await database.write(lambda session: JobRepository(session).create(missing))
    assert await database.read(lambda session: session.scalars(select(Job.id)).all()) == []


async def test_concurrent_creations_from_two_databases_number_jobs_1_to_n(
    database_settings: DatabaseSettings, pipeline: Pipeline
):
    """Two `Database`s on one file stand for two processes: 40 concurrent creations all
    commit, with numbers exactly 1..40 and no conflict to retry."""
    first, second = Database.open(database_settings), Database.open(database_settings)
    try:
        created = await asyncio.gather(
            *(
                db.write(lambda session: JobRepository(session).create(pipeline.id))
                for db in (first, second)
                for _ in range(20)
            )
        )
        stored = await first.read(
            lambda session: session.scalars(
                select(Job.number).where(Job.pipeline_id == pipeline.id).order_by(Job.number)
            ).all()
        )
    finally:
        await first.dispose()
        await second.dispose()
    assert sorted(job.number for job in created) == list(range(1, 41))
    assert stored == list(range(1, 41))


async def test_a_pending_step_may_be_skipped_without_an_exit_code(database: Database, job: NewJob):
    await start(database, job)
    skipped = await database.write(
        lambda session: JobRepository(session).update_step(job.id, 2, status=Status.SKIPPED)
    )
    assert (skipped.status, skipped.exit_code, skipped.started_at) == (Status.SKIPPED, None, None)
    assert skipped.finished_at is not None
    with pytest.raises(InvalidInput, match="not with skipped"):
        await database.write(
            lambda session: JobRepository(session).update_step(
                job.id, 1, status=Status.SKIPPED, exit_code=0
            )
        )


async def test_a_step_that_ran_cannot_be_skipped(database: Database, job: NewJob):
    await start(database, job)
    await database.write(
        lambda session: JobRepository(session).update_step(job.id, 0, status=Status.RUNNING)
    )
    with pytest.raises(Conflict, match=r"step 0 of job .* is running; it cannot become skipped"):
        await database.write(
            lambda session: JobRepository(session).update_step(job.id, 0, status=Status.SKIPPED)
        )


async def test_a_job_cannot_finish_as_skipped(database: Database, job: NewJob):
    await start(database, job)
    with pytest.raises(InvalidInput, match="not as skipped"):
        await finish(database, job, Status.SKIPPED)


async def test_a_pipeline_without_steps_gets_jobs_without_steps(database: Database, team: Team):
    def writes(session: Session) -> Any:
        empty = PipelineRepository(session).create(team.id, name="empty", steps=[])
        job = JobRepository(session).create(empty.id)
        return (job,)

    (job,) = await database.write(writes)
    assert job.steps == []
    assert job.number == 1
