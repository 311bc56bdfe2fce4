"""The units of work that move a job through claim, lease and end (DESIGN 7).

Each move that several API processes could race for is one conditional UPDATE: the claim
takes the oldest pending job in a single statement (`FOR UPDATE SKIP LOCKED` on
PostgreSQL; SQLite's single writer serialises it), and finish, cancel and the lost-worker
sweep change a job only if it is still in the state they read, so each job is claimed
once and ended once whatever the number of claimers, sweepers and nodes.

A job's lease is `jobs.last_seen_at`: the claim sets it and every route of the job's
worker (heartbeat, step, log, artifact) moves it. Only those routes do, so a worker
restarted under the same token cannot keep an old job alive by claiming.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Row,
    Table,
    and_,
    bindparam,
    case,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, joinedload

from danube_shared.db.driver_statements import DriverStatement
from danube_shared.db.repositories import ArtifactRepository, ResolvedSecret, SecretRepository
from danube_shared.db.repositories.logs import LogRepository, LogSlice, append_at_end
from danube_shared.db.schema import REASON_MAX, Artifact, Job, Status, Step
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, DanubeError, InvalidInput, NotFound

WORKER_LOST: Final = "worker lost"

_JOBS = cast(Table, Job.__table__)
_STEPS = cast(Table, Step.__table__)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """A step as the worker routes answer it (the columns of `StepPublic`, in order)."""

    id: str
    position: int
    name: str
    command: str
    timeout_s: int
    status: Status
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job with its steps in order, as the worker routes answer it: plain values read
    in Core, not mapped `Job` and `Step` instances, whose loading and identity map cost
    more than the statements."""

    id: str
    pipeline_id: str
    number: int
    status: Status
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    node: str | None
    cancel_requested: bool
    reason: str | None
    steps: list[StepRecord]


def _status_in(column: ColumnElement[Status], statuses: Iterable[Status]) -> ColumnElement[bool]:
    """`column` is one of `statuses`, as plain bound equalities: `in_()` renders an
    expanding parameter, which SQLAlchemy re-renders into the SQL string at every
    execution (a step update's and a job end's hottest part after the driver itself)."""
    return or_(*(column == status for status in statuses))


_STEP_SHOWN: Final = tuple(_STEPS.c[name] for name in StepRecord.__dataclass_fields__)
_JOB_SHOWN: Final = tuple(
    _JOBS.c[name] for name in JobRecord.__dataclass_fields__ if name != "steps"
)
# The statements of the worker's claim, step moves and finish run on the writer's SQLite
# driver (`DriverStatement`): SQLAlchemy's execution path cost 50 to 100 us of Python per
# statement, two to three times the statement itself, on every job's critical path.
_STEP_TYPES: Final = tuple(column.type for column in _STEP_SHOWN)
_JOB_TYPES: Final = tuple(column.type for column in _JOB_SHOWN)
_STEPS_OF: Final = DriverStatement(
    select(*_STEP_SHOWN)
    .where(_STEPS.c.job_id == bindparam("b_job_id"))
    .order_by(_STEPS.c.position),
    result_types=_STEP_TYPES,
)
_HOLDER: Final = select(_JOBS.c.worker_id, _JOBS.c.status).where(
    _JOBS.c.id == bindparam("b_job_id")
)

# The oldest pending job, locked for this transaction; a job another transaction holds is
# skipped rather than waited for (PostgreSQL; SQLite renders no FOR UPDATE). Bind names
# carry a `b_` prefix: an UPDATE reserves its columns' own names.
_OLDEST_PENDING: Final = (
    select(_JOBS.c.id)
    .where(_JOBS.c.status == Status.PENDING)
    .order_by(_JOBS.c.created_at, _JOBS.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_CLAIM: Final = DriverStatement(
    update(_JOBS)
    .where(_JOBS.c.id == _OLDEST_PENDING, _JOBS.c.status == Status.PENDING)
    .values(
        status=Status.RUNNING,
        worker_id=bindparam("b_worker_id"),
        node=bindparam("b_node"),
        claimed_at=bindparam("b_now"),
        started_at=bindparam("b_now"),
        last_seen_at=bindparam("b_now"),
        token_sha256=bindparam("b_digest"),
        secrets_expire_at=bindparam("b_expire_at"),
    )
    .returning(*_JOB_SHOWN),
    result_types=_JOB_TYPES,
)
# Decided in the UPDATE itself, so a cancel requested a moment before still counts.
_LOST_STATUS: Final = case(
    (_JOBS.c.cancel_requested.is_(True), literal(Status.CANCELLED, _JOBS.c.status.type)),
    else_=literal(Status.FAILED, _JOBS.c.status.type),
)
# The worker's own calls match its job only while it runs and is this worker's: the
# condition is the `job-worker` check, with no read before the write.
_WORKERS_RUNNING_JOB: Final = (
    _JOBS.c.id == bindparam("b_job_id"),
    _JOBS.c.worker_id == bindparam("b_worker_id"),
    _JOBS.c.status == Status.RUNNING,
)
# The lease renewal of every log append, heartbeat and step move, run on the writer's
# SQLite driver: it skips SQLAlchemy's execution path (50 to 100 us of Python per
# statement, see driver_statements).
_TOUCH: Final = DriverStatement(
    update(_JOBS)
    .where(*_WORKERS_RUNNING_JOB)
    .values(last_seen_at=bindparam("b_now"))
    .returning(_JOBS.c.cancel_requested)
)
_FINISH: Final = DriverStatement(
    update(_JOBS)
    .where(*_WORKERS_RUNNING_JOB)
    .values(
        status=bindparam("b_status", type_=_JOBS.c.status.type),
        finished_at=bindparam("b_now"),
        last_seen_at=bindparam("b_now"),
        reason=bindparam("b_reason"),
        # `null()`, not None: a driver statement takes no bound value the statement holds
        # as None (see `DriverStatement`).
        token_sha256=null(),
        secrets_expire_at=null(),
    )
    .returning(*_JOB_SHOWN),
    result_types=_JOB_TYPES,
)
# A job's end in one statement: its running step becomes `b_running_becomes` (finished
# now), its unstarted steps `skipped`. SET expressions read the row as it was.
_STEP_WAS_RUNNING: Final = _STEPS.c.status == Status.RUNNING
_RUNNING_BECOMES: Final[BindParameter[Status]] = bindparam(
    "b_running_becomes", type_=_STEPS.c.status.type
)
_NOW: Final[BindParameter[datetime]] = bindparam("b_now", type_=_STEPS.c.finished_at.type)
_END_STEPS: Final = (
    update(_STEPS)
    .where(
        _STEPS.c.job_id == bindparam("b_job_id"),
        _status_in(_STEPS.c.status, (Status.RUNNING, Status.PENDING)),
    )
    .values(
        status=case(
            (_STEP_WAS_RUNNING, _RUNNING_BECOMES),
            else_=literal(Status.SKIPPED, _STEPS.c.status.type),
        ),
        finished_at=case((_STEP_WAS_RUNNING, _NOW), else_=_STEPS.c.finished_at),
    )
)


def _step_update(from_statuses: frozenset[Status], *, started: bool) -> DriverStatement:
    """The step at `b_position` of `b_job_id` becomes `b_status` if it is in one of
    `from_statuses`: started now, or finished now with `b_exit_code`."""
    values: dict[str, Any] = {"status": bindparam("b_status", type_=_STEPS.c.status.type)}
    if started:
        values["started_at"] = bindparam("b_now")
    else:
        values["finished_at"] = bindparam("b_now")
        values["exit_code"] = bindparam("b_exit_code")
    return DriverStatement(
        update(_STEPS)
        .where(
            _STEPS.c.job_id == bindparam("b_job_id"),
            _STEPS.c.position == bindparam("b_position"),
            _status_in(_STEPS.c.status, sorted(from_statuses)),
        )
        .values(values)
        .returning(*_STEP_SHOWN),
        result_types=_STEP_TYPES,
    )


# A step's moves (DESIGN 7): it starts from pending; it ends, or is skipped, before it
# started; only a started one may still end.
_STEP_MOVES: Final[dict[Status, DriverStatement]] = {
    Status.RUNNING: _step_update(frozenset({Status.PENDING}), started=True),
    Status.SKIPPED: _step_update(frozenset({Status.PENDING}), started=False),
    **{
        ended: _step_update(frozenset({Status.PENDING, Status.RUNNING}), started=False)
        for ended in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
    },
}
_STEP_STATUS: Final = select(_STEPS.c.status).where(
    _STEPS.c.job_id == bindparam("b_job_id"), _STEPS.c.position == bindparam("b_position")
)


def _job(session: Session, job_id: str) -> Job:
    """The job with its steps, read afresh (Core updates bypass the identity map)."""
    job = session.get(Job, job_id, options=[joinedload(Job.steps)], populate_existing=True)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def _not_running(session: Session, job_id: str, doing: str) -> Conflict:
    return Conflict(f"job {job_id} is {_job(session, job_id).status}; {doing}")


def _end_steps(connection: Connection, job_id: str, now: datetime, running_becomes: Status) -> None:
    """Unstarted steps become `skipped`; a running one becomes `running_becomes`."""
    connection.execute(
        _END_STEPS, {"b_job_id": job_id, "b_now": now, "b_running_becomes": running_becomes}
    )


def _steps(connection: Connection, job_id: str) -> list[StepRecord]:
    return [StepRecord(*step) for step in _STEPS_OF.execute(connection, {"b_job_id": job_id})]


def _record(connection: Connection, job: Row[Any]) -> JobRecord:
    """The job of the row of `_JOB_SHOWN` columns, with its steps read in order."""
    return JobRecord(*job, steps=_steps(connection, job[0]))


def _refusal(connection: Connection, job_id: str, worker_id: str, doing: str) -> DanubeError:
    """Why a worker's UPDATE of its running job matched nothing: the job is not this
    worker's, or there is no such job (`NotFound`, as the `job-worker` rule answers), or it
    is no longer running (`Conflict`)."""
    row = connection.execute(_HOLDER, {"b_job_id": job_id}).first()
    if row is None or row[0] != worker_id:
        return NotFound(f"job {job_id} not found")
    return Conflict(f"job {job_id} is {row[1]}; {doing}")


def _reason(text: str | None) -> str | None:
    return None if text is None else text[:REASON_MAX]


# Claim


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job just claimed, and the secrets it sees (for keyd's `job_load`), read in the
    claim's own transaction."""

    job: JobRecord
    secrets: list[ResolvedSecret]


def claim_oldest(
    session: Session, worker_id: str, node: str, digest: bytes, expire_at: datetime
) -> ClaimedJob | None:
    """The oldest pending job, now running for `worker_id` under the token hash `digest`,
    with its secrets; None if no job is pending."""
    connection = session.connection()
    row = _CLAIM.first(
        connection,
        {
            "b_worker_id": worker_id,
            "b_node": node,
            "b_now": utcnow(),
            "b_digest": digest,
            "b_expire_at": expire_at,
        },
    )
    if row is None:
        return None
    job = _record(connection, row)
    return ClaimedJob(job, SecretRepository(session).resolve_for_pipeline(job.pipeline_id))


def _still_this_claim(job_id: str, digest: bytes) -> tuple[ColumnElement[bool], ...]:
    """The job is still running under the claim whose token hashes to `digest`."""
    return (
        _JOBS.c.id == job_id,
        _JOBS.c.status == Status.RUNNING,
        _JOBS.c.token_sha256 == digest,
    )


def release_claim(session: Session, job_id: str, digest: bytes) -> bool:
    """Put a job whose secrets keyd could not take back to pending (its claimer answers
    503 and never saw the token); False if the job moved on meanwhile."""
    row = session.execute(
        update(_JOBS)
        .where(*_still_this_claim(job_id, digest))
        .values(
            status=Status.PENDING,
            worker_id=None,
            node=None,
            claimed_at=None,
            started_at=None,
            last_seen_at=None,
            token_sha256=None,
            secrets_expire_at=None,
        )
        .returning(_JOBS.c.id)
    ).first()
    return row is not None


def fail_claim(session: Session, job_id: str, digest: bytes, reason: str) -> bool:
    """Fail a claimed job whose secrets keyd refused: no claimer could ever run it."""
    now = utcnow()
    row = session.execute(
        update(_JOBS)
        .where(*_still_this_claim(job_id, digest))
        .values(
            status=Status.FAILED,
            finished_at=now,
            reason=_reason(reason),
            token_sha256=None,
            secrets_expire_at=None,
        )
        .returning(_JOBS.c.id)
    ).first()
    if row is None:
        return False
    _end_steps(session.connection(), job_id, now, Status.FAILED)
    return True


# The job's worker


def touch(connection: Connection, job_id: str, worker_id: str) -> bool:
    """Renew the lease of `worker_id`'s running job; whether cancel was requested.
    `NotFound` if the job is not this worker's, `Conflict` once it ended. A unit of Core
    statements (`Database.write_on_connection`), as `update_step` is."""
    row = _TOUCH.first(
        connection, {"b_job_id": job_id, "b_worker_id": worker_id, "b_now": utcnow()}
    )
    if row is None:
        raise _refusal(connection, job_id, worker_id, "it takes no more calls from its worker")
    return bool(row[0])


def update_step(
    connection: Connection,
    job_id: str,
    worker_id: str,
    *,
    position: int,
    status: Status,
    exit_code: int | None,
) -> StepRecord:
    """Move the step at `position` of `worker_id`'s running job to `status`: `running`
    records when it started, a final status when it finished and its exit code."""
    if exit_code is not None and (not status.is_final or status == Status.SKIPPED):
        raise InvalidInput(
            f"an exit code is recorded with succeeded, failed or cancelled, not with {status}"
        )
    move = _STEP_MOVES.get(status)
    if move is None:
        raise InvalidInput(f"a step cannot be set to {status}")
    touch(connection, job_id, worker_id)
    where = {"b_job_id": job_id, "b_position": position}
    row = move.first(
        connection, {**where, "b_status": status, "b_now": utcnow(), "b_exit_code": exit_code}
    )
    if row is not None:
        return StepRecord(*row)
    current = connection.execute(_STEP_STATUS, where).scalar_one_or_none()
    if current is None:
        raise NotFound(f"job {job_id} has no step at position {position}")
    raise Conflict(f"step {position} of job {job_id} is {current}; it cannot become {status}")


def _step_id(session: Session, job_id: str, position: int) -> tuple[str, Status]:
    row = session.execute(
        select(Step.id, Step.status).where(Step.job_id == job_id, Step.position == position)
    ).first()
    if row is None:
        _job(session, job_id)
        raise NotFound(f"job {job_id} has no step at position {position}")
    return row[0], row[1]


@dataclass(frozen=True, slots=True)
class Appended:
    length: int
    cancel_requested: bool


def append_log(
    connection: Connection,
    job_id: str,
    worker_id: str,
    *,
    position: int,
    offset: int,
    data: bytes,
    max_bytes: int,
) -> Appended:
    """Renew the lease of `worker_id`'s running job and store `data` at `offset` of the
    step's log (a final step too: the worker flushes after the step ends), in one write
    and without a read first: the lease UPDATE's own condition (this worker, the job
    running) is the `job-worker` check. `NotFound` if the job is not this worker's,
    `Conflict` once it ended; `LogGap`, `LogTooLarge` as `LogRepository.append`."""
    cancel_requested = touch(connection, job_id, worker_id)
    length = append_at_end(connection, job_id, position, offset, data, max_bytes=max_bytes)
    if length is None:
        # A retry, a gap, a log past its limit or an empty body: the general path, on a
        # session joined to this unit's transaction (it neither commits nor closes it).
        with Session(bind=connection) as session:
            length = LogRepository(session).append_by_position(
                job_id, position, offset, data, max_bytes=max_bytes
            )
    return Appended(length=length, cancel_requested=cancel_requested)


def create_artifact(
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    name: str,
    size_bytes: int,
    sha256: str,
    uri: str,
) -> Artifact:
    touch(session.connection(), job_id, worker_id)
    return ArtifactRepository(session).create(
        job_id, name=name, size_bytes=size_bytes, sha256=sha256, uri=uri
    )


def finish(
    connection: Connection, job_id: str, worker_id: str, status: Status, reason: str | None
) -> JobRecord:
    """End `worker_id`'s running job as `status`; its steps not yet final are skipped.
    `NotFound` if the job is not this worker's, `Conflict` if it is not running. A unit of
    Core statements (`Database.write_on_connection`)."""
    now = utcnow()
    row = _FINISH.first(
        connection,
        {
            "b_job_id": job_id,
            "b_worker_id": worker_id,
            "b_status": status,
            "b_now": now,
            "b_reason": _reason(reason),
        },
    )
    if row is None:
        raise _refusal(connection, job_id, worker_id, f"it cannot become {status}")
    # Read first: a worker finishes a job whose steps it has already ended, so the UPDATE
    # that skips the others (and the read after it) is only needed when one is not final.
    # The job row is this transaction's now, so no step moves between the read and the end.
    steps = _steps(connection, job_id)
    if not all(step.status.is_final for step in steps):
        _end_steps(connection, job_id, now, Status.SKIPPED)
        steps = _steps(connection, job_id)
    return JobRecord(*row, steps=steps)


# A member


@dataclass(frozen=True, slots=True)
class Cancelled:
    job: Job
    # True when a pending job was cancelled at once (no worker, no secrets in keyd).
    at_once: bool


def cancel(session: Session, job_id: str) -> Cancelled:
    """Pending: cancelled at once, steps skipped. Running: `cancel_requested` set for the
    worker to act on. Ended: `Conflict`."""
    now = utcnow()
    row = session.execute(
        update(_JOBS)
        .where(_JOBS.c.id == job_id, _JOBS.c.status == Status.PENDING)
        .values(status=Status.CANCELLED, finished_at=now, cancel_requested=True)
        .returning(_JOBS.c.id)
    ).first()
    if row is not None:
        _end_steps(session.connection(), job_id, now, Status.SKIPPED)
        return Cancelled(_job(session, job_id), at_once=True)
    row = session.execute(
        update(_JOBS)
        .where(_JOBS.c.id == job_id, _JOBS.c.status == Status.RUNNING)
        .values(cancel_requested=True)
        .returning(_JOBS.c.id)
    ).first()
    if row is None:
        raise _not_running(session, job_id, "only a pending or running job can be cancelled")
    return Cancelled(_job(session, job_id), at_once=False)


@dataclass(frozen=True, slots=True)
class LogRead:
    data: bytes
    length: int
    complete: bool


def read_log(session: Session, job_id: str, position: int, offset: int, max_bytes: int) -> LogRead:
    step_id, status = _step_id(session, job_id, position)
    found: LogSlice = LogRepository(session).read(step_id, offset, max_bytes=max_bytes)
    return LogRead(data=found.data, length=found.length, complete=status.is_final)


# The sweep


def _silent_job_ids(session: Session, cutoff: datetime) -> list[str]:
    return list(
        session.scalars(
            select(Job.id).where(Job.status == Status.RUNNING, Job.last_seen_at < cutoff)
        )
    )


def any_lost(session: Session, timeout_s: float) -> bool:
    """Whether some running job's worker has been silent for `timeout_s`."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    return bool(_silent_job_ids(session, cutoff))


def fail_lost(session: Session, timeout_s: float) -> list[str]:
    """End every running job whose worker has been silent on it for `timeout_s`: `failed`
    (`cancelled` if cancel was requested), reason `worker lost`, its running step failed
    and the rest skipped. Returns the jobs this call ended; each UPDATE re-checks the
    lease, so of several sweepers exactly one ends a job."""
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    ended: list[str] = []
    for job_id in _silent_job_ids(session, cutoff):
        row = session.execute(
            update(_JOBS)
            .where(
                and_(
                    _JOBS.c.id == job_id,
                    _JOBS.c.status == Status.RUNNING,
                    _JOBS.c.last_seen_at < cutoff,
                )
            )
            .values(
                status=_LOST_STATUS,
                finished_at=now,
                reason=WORKER_LOST,
                token_sha256=None,
                secrets_expire_at=None,
            )
            .returning(_JOBS.c.id)
        ).first()
        if row is not None:
            _end_steps(session.connection(), job_id, now, Status.FAILED)
            ended.append(job_id)
    return ended
