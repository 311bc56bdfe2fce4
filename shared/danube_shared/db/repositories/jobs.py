"""Jobs (runs of a pipeline) and their steps, with the status rules they follow.

A job goes `pending` -> `running` -> `succeeded` | `failed` | `cancelled`, or straight from
`pending` to `cancelled`. A step goes from `pending` to `running` or to a final status, and
from `running` to a final status, and changes only while its job is running. Any other
change raises `Conflict` naming the current and the requested status.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, func, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    Session,
    class_mapper,
    joinedload,
    make_transient_to_detached,
    selectinload,
)
from sqlalchemy.orm.attributes import set_committed_value

from danube_shared.db.error_translation import is_unique_violation
from danube_shared.db.ids import new_id
from danube_shared.db.repositories.flushing import check_page, flush
from danube_shared.db.repositories.pipelines import PipelineRepository
from danube_shared.db.schema import SHA256_LENGTH, Base, Job, Pipeline, Status, Step
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, InvalidInput, NotFound

_JOB_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
}
_STEP_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
}

_ModelT = TypeVar("_ModelT", bound=Base)

# The statements of `create`, built once (their cache keys and compiled forms are kept)
# and run in Core, on the session's connection and transaction.
_JOBS = cast(Table, Job.__table__)
_PIPELINES = cast(Table, Pipeline.__table__)
_READ_PIPELINE = select(
    _PIPELINES.c.steps,
    select(func.coalesce(func.max(_JOBS.c.number), 0) + 1)
    .where(_JOBS.c.pipeline_id == bindparam("pipeline_id"))
    .scalar_subquery(),
).where(_PIPELINES.c.id == bindparam("pipeline_id"))
_INSERT_JOB = insert(_JOBS)
_INSERT_STEP = insert(cast(Table, Step.__table__))


def _insert_job(session: Session, pipeline_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rows of a new job and its steps, inserted; one sync function, so that its
    three statements cost one switch into SQLAlchemy's greenlet rather than one each."""
    connection = session.connection()
    row = connection.execute(_READ_PIPELINE, {"pipeline_id": pipeline_id}).first()
    if row is None:
        raise NotFound(f"pipeline {pipeline_id} not found")
    definitions, number = row[0], row[1]
    job_id = new_id()
    job_row: dict[str, Any] = {
        "id": job_id,
        "pipeline_id": pipeline_id,
        "number": number,
        "status": Status.PENDING,
        "created_at": utcnow(),
        "started_at": None,
        "finished_at": None,
        "token_sha256": None,
        "secrets_expire_at": None,
    }
    step_rows: list[dict[str, Any]] = [
        {
            "id": new_id(),
            "job_id": job_id,
            "position": position,
            "name": definition["name"],
            "command": definition["command"],
            "status": Status.PENDING,
            "exit_code": None,
            "started_at": None,
            "finished_at": None,
        }
        for position, definition in enumerate(definitions)
    ]
    try:
        connection.execute(_INSERT_JOB, job_row)
        if step_rows:
            connection.execute(_INSERT_STEP, step_rows)
    except sa_exc.IntegrityError as error:
        if is_unique_violation(error):
            raise Conflict(
                f"another job of pipeline {pipeline_id} took number {number}; retry"
            ) from error
        raise
    return job_row, step_rows


def _as_loaded(cls: type[_ModelT], row: dict[str, Any]) -> _ModelT:
    """An instance holding every column of `row` as a load from the database would: no
    change history, so nothing to flush. (The constructor records each value as a
    change, then `make_transient_to_detached` forgets them all: several times the cost.)"""
    instance: _ModelT = class_mapper(cls).class_manager.new_instance()
    vars(instance).update(row)
    return instance


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def create(self, pipeline_id: str) -> Job:
        """A new pending job of the pipeline, numbered one past the pipeline's last job, with
        a pending step for each of the pipeline's step definitions.

        Run it inside `db.write()`: the number is read and used in the same IMMEDIATE
        transaction, so concurrent creations cannot pick the same one.

        This is the API's hottest write, so it costs three statements: one reads the
        pipeline's steps and the next number together, one inserts the job, one all its
        steps. The rows go in as plain Core INSERTs, and the returned objects join the
        session as already persistent (as if loaded), so no unit-of-work flush has to
        work that out and `get` finds them in the identity map."""
        job_row, step_rows = await self._session.run_sync(_insert_job, pipeline_id)
        steps = [_as_loaded(Step, step_row) for step_row in step_rows]
        job = _as_loaded(Job, job_row)
        set_committed_value(job, "steps", steps)
        for instance in (*steps, job):
            make_transient_to_detached(instance)
        self._session.add(job)
        return job

    async def get(self, job_id: str) -> Job:
        """The job with its steps loaded, in order."""
        job = await self._session.get(Job, job_id, options=[joinedload(Job.steps)])
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    async def list_for_pipeline(
        self, pipeline_id: str, *, limit: int = 50, offset: int = 0
    ) -> Sequence[Job]:
        """One page of the pipeline's jobs, newest (highest number) first, with their steps;
        `NotFound` if the pipeline does not exist."""
        check_page(limit, offset)
        await PipelineRepository(self._session).get(pipeline_id)
        statement = (
            select(Job)
            .where(Job.pipeline_id == pipeline_id)
            .order_by(Job.number.desc())
            .limit(limit)
            .offset(offset)
            .options(selectinload(Job.steps))
        )
        return (await self._session.scalars(statement)).all()

    async def start(self, job_id: str, *, token_sha256: bytes, secrets_expire_at: datetime) -> Job:
        """Move a pending job to running: records when it started, the SHA-256 of its token
        and when keyd's cache of its secrets expires."""
        if len(token_sha256) != SHA256_LENGTH:
            raise InvalidInput(f"token_sha256 must be {SHA256_LENGTH} bytes")
        job = await self.get(job_id)
        _check_transition(job, Status.RUNNING)
        job.status = Status.RUNNING
        job.started_at = utcnow()
        job.token_sha256 = token_sha256
        job.secrets_expire_at = secrets_expire_at
        await flush(self._session, conflict=f"job {job_id} changed concurrently; retry")
        return job

    async def finish(self, job_id: str, status: Status) -> Job:
        """Move a running job (or a pending one, to `cancelled`) to a final status. Its
        token hash and secrets expiry are cleared: keyd drops its secrets at this point."""
        if not status.is_final:
            raise InvalidInput(f"a job finishes as succeeded, failed or cancelled, not as {status}")
        job = await self.get(job_id)
        _check_transition(job, status)
        job.status = status
        job.finished_at = utcnow()
        job.token_sha256 = None
        job.secrets_expire_at = None
        await flush(self._session, conflict=f"job {job_id} changed concurrently; retry")
        return job

    async def list_running(self) -> Sequence[Job]:
        """Every running job, oldest start first, with its token hash and secrets expiry
        (what the API needs to load keyd again after a restart). Steps are not loaded."""
        statement = select(Job).where(Job.status == Status.RUNNING).order_by(Job.started_at, Job.id)
        return (await self._session.scalars(statement)).all()

    async def update_step(
        self, job_id: str, position: int, *, status: Status, exit_code: int | None = None
    ) -> Step:
        """Move the step at `position` of a running job to `status`: `running` records when
        it started, a final status when it finished and its exit code."""
        if exit_code is not None and not status.is_final:
            raise InvalidInput(f"an exit code is recorded with a final status, not with {status}")
        job = await self.get(job_id)
        if job.status != Status.RUNNING:
            raise Conflict(
                f"job {job_id} is {job.status}; its steps change only while it is running"
            )
        step = next((step for step in job.steps if step.position == position), None)
        if step is None:
            raise NotFound(f"job {job_id} has no step at position {position}")
        if status not in _STEP_TRANSITIONS.get(step.status, frozenset()):
            raise Conflict(
                f"step {position} of job {job_id} is {step.status}; it cannot become {status}"
            )
        now = utcnow()
        step.status = status
        if status == Status.RUNNING:
            step.started_at = now
        else:
            step.finished_at = now
            step.exit_code = exit_code
        await flush(self._session, conflict=f"job {job_id} changed concurrently; retry")
        return step


def _check_transition(job: Job, requested: Status) -> None:
    if requested not in _JOB_TRANSITIONS.get(job.status, frozenset()):
        raise Conflict(f"job {job.id} is {job.status}; it cannot become {requested}")
