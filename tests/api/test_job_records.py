"""The worker's units of work (claim, step move, finish) return the job and its steps as
the database holds them: on SQLite their statements run on the writer's driver
(`DriverStatement`), and what they return must be what SQLAlchemy reads back, typed the
same way (statuses as `Status`, aware UTC datetimes, booleans)."""

from __future__ import annotations

from dataclasses import astuple
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.orm import Session, joinedload

from danube_api import job_leases
from danube_api.job_leases import JobRecord, StepRecord
from danube_shared.db.engine import Database
from danube_shared.db.schema import Job, Status, Step
from danube_shared.tokens import TokenKind, new_token, token_sha256
from tests.api.callers import make_worker
from tests.api.conftest import World, new_job


def _stored(session: Session, job_id: str) -> JobRecord:
    """The job as the ORM reads it back, in the units' record shape."""
    job = session.get(Job, job_id, options=[joinedload(Job.steps)], populate_existing=True)
    assert job is not None
    return JobRecord(
        **{name: getattr(job, name) for name in JobRecord.__dataclass_fields__ if name != "steps"},
        steps=[_stored_step(step) for step in sorted(job.steps, key=lambda s: s.position)],
    )


def _stored_step(step: Step) -> StepRecord:
    return StepRecord(**{name: getattr(step, name) for name in StepRecord.__dataclass_fields__})


def _assert_typed(job: JobRecord) -> None:
    assert isinstance(job.status, Status)
    assert type(job.cancel_requested) is bool
    for moment in (job.created_at, job.started_at, job.finished_at):
        assert moment is None or moment.utcoffset() == timedelta(0)
    for step in job.steps:
        assert isinstance(step.status, Status)
        for moment in (step.started_at, step.finished_at):
            assert moment is None or moment.utcoffset() == timedelta(0)


async def test_claim_step_moves_and_finish_return_what_the_database_holds(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    created = await new_job(client, world.pipeline_id)
    worker = await make_worker(database, "records")
    digest = token_sha256(new_token(TokenKind.JOB))
    expire_at = datetime.now(UTC) + timedelta(minutes=5)

    claimed = await database.write(
        job_leases.claim_oldest, worker.worker_id, "node-a", digest, expire_at
    )
    assert claimed is not None
    assert claimed.job.id == created["id"]
    assert claimed.job.status is Status.RUNNING
    assert (claimed.job.worker_id, claimed.job.node) == (worker.worker_id, "node-a")
    _assert_typed(claimed.job)
    assert astuple(claimed.job) == astuple(await database.read(_stored, claimed.job.id))

    job_id = claimed.job.id
    started = await database.write_on_connection(
        job_leases.update_step,
        job_id,
        worker.worker_id,
        position=0,
        status=Status.RUNNING,
        exit_code=None,
    )
    ended = await database.write_on_connection(
        job_leases.update_step,
        job_id,
        worker.worker_id,
        position=0,
        status=Status.FAILED,
        exit_code=3,
    )
    stored = await database.read(_stored, job_id)
    assert started.status is Status.RUNNING
    assert started.started_at is not None
    assert ended.status is Status.FAILED
    assert ended.exit_code == 3
    assert astuple(ended) == astuple(stored.steps[0])

    finished = await database.write_on_connection(
        job_leases.finish, job_id, worker.worker_id, Status.FAILED, "step 0 failed"
    )
    _assert_typed(finished)
    assert finished.status is Status.FAILED
    assert finished.reason == "step 0 failed"
    # The steps not run are skipped; the returned job is the stored one, to the microsecond.
    assert [step.status for step in finished.steps[1:]] == [Status.SKIPPED] * (
        len(finished.steps) - 1
    )
    assert astuple(finished) == astuple(await database.read(_stored, job_id))
