"""The unit of work of a worker's log append (DESIGN 7): the claim check, the lease and
the append in one write transaction.

The route's rule is `job-worker` (`access.JobWorkerInWrite`): the caller must be the
worker that claimed the job, and any other caller's view is that the job does not exist.
Here that check is the lease UPDATE's own condition (this worker, the job running), so
an append costs no read before its write: one hop to the database instead of two, and
the check and the append see the same state. Only when the UPDATE matches nothing does
the unit read the job, to answer 404 (no such job, or not this worker's) or 409 (the job
has ended).
"""

from __future__ import annotations

from typing import Final, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from danube_api.job_leases import Appended
from danube_shared.db.repositories.logs import LogRepository
from danube_shared.db.schema import Job, Status
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, DanubeError, NotFound

_JOBS = cast(Table, Job.__table__)
# Built once at import. Bind names carry a `b_` prefix: an UPDATE reserves its columns'
# own names.
_LEASE: Final = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("b_job_id"),
        _JOBS.c.worker_id == bindparam("b_worker_id"),
        _JOBS.c.status == Status.RUNNING,
    )
    .values(last_seen_at=bindparam("b_now"))
    .returning(_JOBS.c.cancel_requested)
)
_HOLDER: Final = select(_JOBS.c.worker_id, _JOBS.c.status).where(_JOBS.c.id == bindparam("job_id"))


def _refusal(connection: Connection, job_id: str, worker_id: str) -> DanubeError:
    """Why the lease UPDATE matched nothing: not this worker's job (or none), or ended."""
    row = connection.execute(_HOLDER, {"job_id": job_id}).first()
    if row is None or row[0] != worker_id:
        return NotFound(f"job {job_id} not found")
    return Conflict(f"job {job_id} is {row[1]}; it takes no more calls from its worker")


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
    """Renew the lease of `worker_id`'s running job and store `data` at `offset` of the
    step's log (a final step too: the worker flushes after the step ends). `NotFound` if
    the job is not this worker's, `Conflict` once it ended; `LogGap`, `LogTooLarge` as
    `LogRepository.append`."""
    connection = session.connection()
    lease = connection.execute(
        _LEASE, {"b_job_id": job_id, "b_worker_id": worker_id, "b_now": utcnow()}
    ).first()
    if lease is None:
        raise _refusal(connection, job_id, worker_id)
    length = LogRepository(session).append_at(job_id, position, offset, data, max_bytes=max_bytes)
    return Appended(length=length, cancel_requested=bool(lease[0]))
