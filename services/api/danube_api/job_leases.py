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

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, cast

from sqlalchemy import ColumnElement, Table, and_, bindparam, case, literal, select, update
from sqlalchemy.orm import Session, joinedload

from danube_shared.db.repositories import ArtifactRepository, JobRepository
from danube_shared.db.repositories.logs import LogRepository, LogSlice
from danube_shared.db.schema import REASON_MAX, Artifact, Job, Status, Step
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, NotFound

WORKER_LOST: Final = "worker lost"

_JOBS = cast(Table, Job.__table__)
_STEPS = cast(Table, Step.__table__)

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
_CLAIM: Final = (
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
    .returning(_JOBS.c.id)
)
# Decided in the UPDATE itself, so a cancel requested a moment before still counts.
_LOST_STATUS: Final = case(
    (_JOBS.c.cancel_requested.is_(True), literal(Status.CANCELLED, _JOBS.c.status.type)),
    else_=literal(Status.FAILED, _JOBS.c.status.type),
)
_TOUCH: Final = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("b_job_id"),
        _JOBS.c.worker_id == bindparam("b_worker_id"),
        _JOBS.c.status == Status.RUNNING,
    )
    .values(last_seen_at=bindparam("b_now"))
    .returning(_JOBS.c.cancel_requested)
)


def _job(session: Session, job_id: str) -> Job:
    """The job with its steps, read afresh (Core updates bypass the identity map)."""
    job = session.get(Job, job_id, options=[joinedload(Job.steps)], populate_existing=True)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def _not_running(session: Session, job_id: str, doing: str) -> Conflict:
    return Conflict(f"job {job_id} is {_job(session, job_id).status}; {doing}")


def _end_steps(session: Session, job_id: str, now: datetime, running_becomes: Status) -> None:
    """Unstarted steps become `skipped`; a running one becomes `running_becomes`."""
    session.execute(
        update(_STEPS)
        .where(_STEPS.c.job_id == job_id, _STEPS.c.status == Status.RUNNING)
        .values(status=running_becomes, finished_at=now)
    )
    session.execute(
        update(_STEPS)
        .where(_STEPS.c.job_id == job_id, _STEPS.c.status == Status.PENDING)
        .values(status=Status.SKIPPED)
    )


def _reason(text: str | None) -> str | None:
    return None if text is None else text[:REASON_MAX]


# Claim


def claim_oldest(
    session: Session, worker_id: str, node: str, digest: bytes, expire_at: datetime
) -> Job | None:
    """The oldest pending job, now running for `worker_id` under the token hash `digest`;
    None if no job is pending."""
    row = session.execute(
        _CLAIM,
        {
            "b_worker_id": worker_id,
            "b_node": node,
            "b_now": utcnow(),
            "b_digest": digest,
            "b_expire_at": expire_at,
        },
    ).first()
    return None if row is None else _job(session, row[0])


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
    _end_steps(session, job_id, now, Status.FAILED)
    return True


# The job's worker


def touch(session: Session, job_id: str, worker_id: str) -> bool:
    """Renew the job's lease; whether cancel was requested. `Conflict` once it ended."""
    row = session.execute(
        _TOUCH, {"b_job_id": job_id, "b_worker_id": worker_id, "b_now": utcnow()}
    ).first()
    if row is None:
        raise _not_running(session, job_id, "it takes no more calls from its worker")
    return bool(row[0])


def update_step(
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    position: int,
    status: Status,
    exit_code: int | None,
) -> Step:
    touch(session, job_id, worker_id)
    return JobRepository(session).update_step(job_id, position, status=status, exit_code=exit_code)


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
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    position: int,
    offset: int,
    data: bytes,
    max_bytes: int,
) -> Appended:
    """Store `data` at `offset` of the step's log while the job runs (a final step too:
    the worker flushes after the step ends); `LogGap`, `LogTooLarge` as the repository."""
    cancel_requested = touch(session, job_id, worker_id)
    step_id, _ = _step_id(session, job_id, position)
    length = LogRepository(session).append(step_id, offset, data, max_bytes=max_bytes)
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
    touch(session, job_id, worker_id)
    return ArtifactRepository(session).create(
        job_id, name=name, size_bytes=size_bytes, sha256=sha256, uri=uri
    )


def finish(
    session: Session, job_id: str, worker_id: str, status: Status, reason: str | None
) -> Job:
    """End the worker's running job as `status`; its steps not yet final are skipped."""
    now = utcnow()
    row = session.execute(
        update(_JOBS)
        .where(
            _JOBS.c.id == job_id,
            _JOBS.c.worker_id == worker_id,
            _JOBS.c.status == Status.RUNNING,
        )
        .values(
            status=status,
            finished_at=now,
            last_seen_at=now,
            reason=_reason(reason),
            token_sha256=None,
            secrets_expire_at=None,
        )
        .returning(_JOBS.c.id)
    ).first()
    if row is None:
        raise _not_running(session, job_id, f"it cannot become {status}")
    _end_steps(session, job_id, now, Status.SKIPPED)
    return _job(session, job_id)


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
        _end_steps(session, job_id, now, Status.SKIPPED)
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
            _end_steps(session, job_id, now, Status.FAILED)
            ended.append(job_id)
    return ended
