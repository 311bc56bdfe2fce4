"""Jobs (runs of a pipeline) and their steps, with the status rules they follow.

A job goes `pending` -> `running` -> `succeeded` | `failed` | `cancelled`, or straight from
`pending` to `cancelled`. A step goes from `pending` to `running` or to a final status
(`skipped` included: it never ran), and from `running` to a final status other than
`skipped`; it changes only while its job is running. Any other change raises `Conflict`
naming the current and the requested status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Table, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, joinedload, selectinload

from danube_shared.db.driver_statements import DriverStatement
from danube_shared.db.error_translation import is_unique_violation
from danube_shared.db.ids import new_id
from danube_shared.db.job_numbers import take_job_number, take_next_number
from danube_shared.db.paging import check_page
from danube_shared.db.repositories.flushing import flush
from danube_shared.db.repositories.pipelines import PipelineRepository
from danube_shared.db.schema import (
    SHA256_LENGTH,
    STEP_TIMEOUT_DEFAULT_S,
    Job,
    Status,
    Step,
    StepDefinition,
)
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, InvalidInput, NotFound

_JOB_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
}
_STEP_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(
        {Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED}
    ),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
}

# The inserts of `create`, built once at import (SQLAlchemy keeps their compiled forms),
# run in Core on the session's connection: no unit-of-work flush to work out. The first
# statement, `take_job_number`, is prebuilt in its own module.
_UNCLAIMED: Final[dict[str, Any]] = {
    "worker_id": None,
    "node": None,
    "claimed_at": None,
    "last_seen_at": None,
    "reason": None,
}
# On SQLite both run straight on the driver's cursor (`driver_statements`): SQLAlchemy's
# execution path cost more than the inserts themselves. Every column with a Python-side
# default is given (that path runs no defaults).
_JOB_COLUMNS: Final = (
    "id",
    "pipeline_id",
    "number",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "token_sha256",
    "secrets_expire_at",
    "cancel_requested",
)
_STEP_COLUMNS: Final = (
    "id",
    "job_id",
    "position",
    "name",
    "command",
    "status",
    "exit_code",
    "started_at",
    "finished_at",
    "timeout_s",
    "log_length",
)
_INSERT_JOB: Final = DriverStatement(insert(cast(Table, Job.__table__)), column_keys=_JOB_COLUMNS)
# Run with a list of rows: one executemany for all the steps of a job.
_INSERT_STEPS: Final = DriverStatement(
    insert(cast(Table, Step.__table__)), column_keys=_STEP_COLUMNS
)


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step as `JobRepository.create` inserted it."""

    id: str
    job_id: str
    position: int
    name: str
    command: str
    status: Status
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None
    timeout_s: int
    log_length: int


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job as `JobRepository.create` inserted it, with its steps in order.

    Plain values rather than mapped `Job` and `Step` instances: building those records
    every attribute as a change, which cost more than the three statements together
    (about 350 of 890 us per creation, measured)."""

    id: str
    pipeline_id: str
    number: int
    status: Status
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    token_sha256: bytes | None
    secrets_expire_at: datetime | None
    worker_id: str | None
    node: str | None
    claimed_at: datetime | None
    last_seen_at: datetime | None
    cancel_requested: bool
    reason: str | None
    steps: list[NewStep]


@dataclass(frozen=True, slots=True)
class JobDraft:
    """A pending job before its insert: its row (all but the number) and its steps' rows.

    Made by the caller of the write (`JobDraft.of`), so that the unit on the writer runs
    its statements and little else: ids, the creation time and the rows are built before
    the hop, where that Python runs warm in the caller's thread. `inserted` is the job as
    stored, once its number is known."""

    pipeline_id: str
    job: dict[str, Any]
    steps: list[dict[str, Any]]

    @classmethod
    def of(cls, pipeline_id: str, definitions: Sequence[StepDefinition]) -> JobDraft:
        job_id = new_id()
        job: dict[str, Any] = {
            "id": job_id,
            "pipeline_id": pipeline_id,
            "status": Status.PENDING,
            "created_at": utcnow(),
            "started_at": None,
            "finished_at": None,
            "token_sha256": None,
            "secrets_expire_at": None,
            "cancel_requested": False,
        }
        steps: list[dict[str, Any]] = [
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
                # Every stored definition has its timeout; the default covers any that
                # reached the table some other way.
                "timeout_s": definition.get("timeout_s", STEP_TIMEOUT_DEFAULT_S),
                "log_length": 0,
            }
            for position, definition in enumerate(definitions)
        ]
        return cls(pipeline_id, job, steps)

    def inserted(self, number: int) -> NewJob:
        # The columns left out of the inserts hold their defaults (no worker, no lease, no
        # log yet): binding them too cost CPU on the hot path for no information.
        return NewJob(
            **self.job,
            number=number,
            **_UNCLAIMED,
            steps=[NewStep(**row) for row in self.steps],
        )


def insert_job(connection: Connection, draft: JobDraft) -> int:
    """Insert the drafted job with the pipeline's next number, taken in this transaction
    as `JobRepository.create` takes it, and its steps; the number. `NotFound` if the
    pipeline does not exist. The draft's steps must be the pipeline's (a pipeline's steps
    never change once it is created, so a caller may keep them)."""
    number = take_next_number(connection, draft.pipeline_id)
    if number is None:
        raise NotFound(f"pipeline {draft.pipeline_id} not found")
    _insert(connection, draft, number)
    return number


def _insert(connection: Connection, draft: JobDraft, number: int) -> None:
    try:
        _INSERT_JOB.execute(connection, {**draft.job, "number": number})
        if draft.steps:
            _INSERT_STEPS.execute_many(connection, draft.steps)
    except sa_exc.IntegrityError as error:
        if is_unique_violation(error):
            # Only if the counter is behind the pipeline's jobs (rows written around it).
            raise Conflict(
                f"job number {number} of pipeline {draft.pipeline_id} is taken already; the "
                "pipeline's next_job_number is behind its jobs"
            ) from error
        raise


class JobRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(self, pipeline_id: str) -> NewJob:
        """A new pending job of the pipeline, numbered from the pipeline's counter row, with a
        pending step for each of the pipeline's step definitions (and its timeout).

        Run it in a write unit of work: the number is taken (`take_job_number`) in the
        transaction that inserts the job, so creations on any number of processes queue on
        the pipeline's row and never take the same number; nothing retries, and a rollback
        gives the number back. (`insert_job` is the same creation for a caller that knows
        the pipeline's steps.)

        This is the API's hottest write, so it costs three statements: one takes the number
        and reads the pipeline's steps, one inserts the job, one all its steps. It returns
        the values it inserted, not mapped instances (see `NewJob`)."""
        connection = self._session.connection()
        taken = take_job_number(connection, pipeline_id)
        if taken is None:
            raise NotFound(f"pipeline {pipeline_id} not found")
        draft = JobDraft.of(pipeline_id, taken.steps)
        _insert(connection, draft, taken.number)
        return draft.inserted(taken.number)

    def get(self, job_id: str) -> Job:
        """The job with its steps loaded, in order."""
        job = self._session.get(Job, job_id, options=[joinedload(Job.steps)])
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def list_for_pipeline(
        self, pipeline_id: str, *, limit: int = 50, offset: int = 0
    ) -> Sequence[Job]:
        """One page of the pipeline's jobs, newest (highest number) first, with their steps;
        `NotFound` if the pipeline does not exist."""
        check_page(limit, offset)
        PipelineRepository(self._session).get(pipeline_id)
        statement = (
            select(Job)
            .where(Job.pipeline_id == pipeline_id)
            .order_by(Job.number.desc())
            .limit(limit)
            .offset(offset)
            .options(selectinload(Job.steps))
        )
        return (self._session.scalars(statement)).all()

    def start(self, job_id: str, *, token_sha256: bytes, secrets_expire_at: datetime) -> Job:
        """Move a pending job to running: records when it started, the SHA-256 of its token
        and when keyd's cache of its secrets expires."""
        if len(token_sha256) != SHA256_LENGTH:
            raise InvalidInput(f"token_sha256 must be {SHA256_LENGTH} bytes")
        job = self.get(job_id)
        _check_transition(job, Status.RUNNING)
        job.status = Status.RUNNING
        job.started_at = utcnow()
        job.token_sha256 = token_sha256
        job.secrets_expire_at = secrets_expire_at
        flush(self._session, conflict=f"job {job_id} changed concurrently; retry")
        return job

    def finish(self, job_id: str, status: Status) -> Job:
        """Move a running job (or a pending one, to `cancelled`) to a final status. Its
        token hash and secrets expiry are cleared: keyd drops its secrets at this point."""
        if not status.is_final or status == Status.SKIPPED:
            raise InvalidInput(f"a job finishes as succeeded, failed or cancelled, not as {status}")
        job = self.get(job_id)
        _check_transition(job, status)
        job.status = status
        job.finished_at = utcnow()
        job.token_sha256 = None
        job.secrets_expire_at = None
        flush(self._session, conflict=f"job {job_id} changed concurrently; retry")
        return job

    def list_running(self) -> Sequence[Job]:
        """Every running job, oldest start first, with its token hash and secrets expiry
        (what the API needs to load keyd again after a restart). Steps are not loaded."""
        statement = select(Job).where(Job.status == Status.RUNNING).order_by(Job.started_at, Job.id)
        return (self._session.scalars(statement)).all()

    def update_step(
        self, job_id: str, position: int, *, status: Status, exit_code: int | None = None
    ) -> Step:
        """Move the step at `position` of a running job to `status`: `running` records when
        it started, a final status when it finished and its exit code."""
        if exit_code is not None and (not status.is_final or status == Status.SKIPPED):
            raise InvalidInput(
                f"an exit code is recorded with succeeded, failed or cancelled, not with {status}"
            )
        job = self.get(job_id)
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
        flush(self._session, conflict=f"job {job_id} changed concurrently; retry")
        return step


def _check_transition(job: Job, requested: Status) -> None:
    if requested not in _JOB_TRANSITIONS.get(job.status, frozenset()):
        raise Conflict(f"job {job.id} is {job.status}; it cannot become {requested}")
