"""Jobs, their steps, logs and artifact records: what the job and worker routes do, as
units of work (`job_leases`) and keyd calls (`keyd_sync`) in the right order.

The claim commits the job as running with a fresh token's hash, then loads its secrets
into keyd (keyd is never called inside a write unit). If keyd is unavailable, the job goes
back to pending and the claimer gets 503: it never saw the token, so no worker holds the
job. If keyd refuses the job's secrets (a ciphertext it cannot open), no worker could run
it: the job is failed with the reason and the claim goes on to the next pending job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from danube_api import job_leases
from danube_api.job_leases import Appended, LogRead
from danube_api.keyd_sync import KeydSync
from danube_shared.db.engine import Database
from danube_shared.db.job_notifications import JobWakeups, notify_job_created
from danube_shared.db.repositories import (
    ArtifactRepository,
    JobDraft,
    JobRepository,
    NewJob,
    PipelineRepository,
    insert_job,
)
from danube_shared.db.schema import Artifact, Job, Status, StepDefinition
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import DanubeError, KeydRejected
from danube_shared.logs import get_logger
from danube_shared.tokens import TokenKind, new_token, token_sha256

log = get_logger(__name__)

# A long poll looks again at least this often: the polling fallback, should a wake-up be
# lost (a listener reconnecting, a job created through a process that cannot notify).
CLAIM_POLL_S: Final = 1.0
MAX_REMEMBERED_CLAIMS: Final = 10_000


# Pipelines whose step definitions this process keeps (see `JobService.create`); past
# this many, the oldest kept is forgotten.
MAX_KEPT_PIPELINES: Final = 10_000


def _insert(connection: Connection, draft: JobDraft) -> int:
    number = insert_job(connection, draft)
    # Delivered to every node's listener at commit (PostgreSQL); nothing on SQLite.
    notify_job_created(connection)
    return number


def _steps_of(session: Session, pipeline_id: str) -> list[StepDefinition]:
    return PipelineRepository(session).steps_of(pipeline_id)


def _get(session: Session, job_id: str) -> Job:
    return JobRepository(session).get(job_id)


def _list_for_pipeline(session: Session, pipeline_id: str, limit: int, offset: int) -> list[Job]:
    return list(JobRepository(session).list_for_pipeline(pipeline_id, limit=limit, offset=offset))


def _list_artifacts(session: Session, job_id: str, limit: int, offset: int) -> list[Artifact]:
    return list(ArtifactRepository(session).list_for_job(job_id, limit=limit, offset=offset))


@dataclass(frozen=True, slots=True)
class Claimed:
    job: job_leases.JobRecord
    token: str


class JobService:
    """Jobs, built with the database, the keeper of keyd's cache, the claims' wake-ups,
    this API's node name and the lease limits."""

    def __init__(
        self,
        database: Database,
        keyd_sync: KeydSync,
        wakeups: JobWakeups,
        *,
        node: str,
        cache_ttl_s: int,
        worker_timeout_s: float,
        max_log_bytes: int,
    ) -> None:
        self._database = database
        self._keyd_sync = keyd_sync
        self._node = node
        self._cache_ttl_s = cache_ttl_s
        self.worker_timeout_s = worker_timeout_s
        self.max_log_bytes = max_log_bytes
        self._wakeups = wakeups
        # Job id to the worker it was given to, for the jobs this process handed out and
        # has not seen finished; forgotten at their finish or when the sweep ends them.
        self._claimed: dict[str, str] = {}
        # Pipeline id to its step definitions, which never change once it is created.
        self._steps: dict[str, Sequence[StepDefinition]] = {}

    async def create(self, pipeline_id: str) -> NewJob:
        """A new pending job of the pipeline, with its steps; `NotFound` if no pipeline.

        The job's rows are drafted here, before the write, from the pipeline's step
        definitions, which this process reads once per pipeline and keeps (they never
        change once the pipeline is created): the unit on the writer thread then only
        takes the number and inserts."""
        steps = self._steps.get(pipeline_id)
        if steps is None:
            steps = await self._database.read(_steps_of, pipeline_id)
            if len(self._steps) >= MAX_KEPT_PIPELINES:
                del self._steps[next(iter(self._steps))]
            self._steps[pipeline_id] = steps
        draft = JobDraft.of(pipeline_id, steps)
        number = await self._database.write_on_connection(_insert, draft)
        # This process's claims at once; other nodes' hear the NOTIFY.
        self._wakeups.job_created()
        return draft.inserted(number)

    async def get(self, job_id: str) -> Job:
        return await self._database.read(_get, job_id)

    async def list_for_pipeline(self, pipeline_id: str, *, limit: int, offset: int) -> list[Job]:
        return await self._database.read(_list_for_pipeline, pipeline_id, limit, offset)

    # The claim

    async def claim(
        self,
        worker_id: str,
        *,
        wait_s: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> Claimed | None:
        """The oldest pending job, now running for `worker_id` with its secrets in keyd,
        and its token; waits up to `wait_s` for one; None if none came. `gone` says
        whether the claimer hung up: then nothing more is claimed for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            arrival = self._wakeups.current()
            if gone is not None and await gone():
                return None
            claimed = await self._claim_once(worker_id)
            if claimed is not None:
                return claimed
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await self._wakeups.wait(min(remaining, CLAIM_POLL_S), since=arrival)

    async def _claim_once(self, worker_id: str) -> Claimed | None:
        while True:
            token = new_token(TokenKind.JOB)
            digest = token_sha256(token)
            # Taken before the load, so the stored expiry is never later than keyd's own.
            expire_at = utcnow() + timedelta(seconds=self._cache_ttl_s)
            claimed = await self._database.write(
                job_leases.claim_oldest, worker_id, self._node, digest, expire_at
            )
            if claimed is None:
                return None
            job = claimed.job
            try:
                await self._keyd_sync.load_claimed(job.id, digest, claimed.secrets)
            except KeydRejected as exc:
                await self._database.write(
                    job_leases.fail_claim,
                    job.id,
                    digest,
                    f"secrets unavailable: keyd refused them ({exc.reason})",
                )
                await self._keyd_sync.drop(job.id)
                log.warning("claimed job failed: keyd refused its secrets", job_id=job.id)
                continue
            except BaseException:
                # Unavailable, or the request cancelled: the claimer never sees the token.
                await asyncio.shield(self._release(job.id, digest))
                raise
            log.info("job claimed", job_id=job.id, worker_id=worker_id, node=self._node)
            if len(self._claimed) >= MAX_REMEMBERED_CLAIMS:
                # Jobs ended by another process's sweep are never forgotten here: a bound,
                # past which finishes take the checked path until the map fills again.
                self._claimed.clear()
            self._claimed[job.id] = worker_id
            return Claimed(job=job, token=token)

    async def _release(self, job_id: str, digest: bytes) -> None:
        try:
            released = await self._database.write(job_leases.release_claim, job_id, digest)
            await self._keyd_sync.drop(job_id)
        except DanubeError as exc:
            # The lease then runs out and the sweep ends the job.
            log.warning("claim not released", job_id=job_id, error=exc.code)
            return
        log.info("claim released: keyd did not take the job", job_id=job_id, released=released)

    # The job's worker. Each unit checks the claim itself (the routes' rule is
    # `JobWorkerInWrite`): `NotFound` if the job is not `worker_id`'s, `Conflict` once it
    # ended.

    async def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Renew the lease; whether cancel was requested."""
        return await self._database.write_on_connection(job_leases.touch, job_id, worker_id)

    async def update_step(
        self, job_id: str, worker_id: str, position: int, *, status: Status, exit_code: int | None
    ) -> job_leases.StepRecord:
        return await self._database.write_on_connection(
            job_leases.update_step,
            job_id,
            worker_id,
            position=position,
            status=status,
            exit_code=exit_code,
        )

    async def append_log(
        self, job_id: str, worker_id: str, position: int, *, offset: int, data: bytes
    ) -> Appended:
        """Append to the log of `worker_id`'s job; `NotFound` if the job is not its own."""
        return await self._database.write_on_connection(
            job_leases.append_log,
            job_id,
            worker_id,
            position=position,
            offset=offset,
            data=data,
            max_bytes=self.max_log_bytes,
        )

    async def create_artifact(
        self, job_id: str, worker_id: str, *, name: str, size_bytes: int, sha256: str, uri: str
    ) -> Artifact:
        return await self._database.write(
            job_leases.create_artifact,
            job_id,
            worker_id,
            name=name,
            size_bytes=size_bytes,
            sha256=sha256,
            uri=uri,
        )

    async def finish(
        self, job_id: str, worker_id: str, status: Status, reason: str | None
    ) -> job_leases.JobRecord:
        """End the worker's job; its steps not yet final are skipped; its secrets dropped.

        A job this process gave to `worker_id` has its secrets dropped while the end is
        written (`KeydSync.drop_while`): the caller is the worker that holds the job's
        token and is done with it, so dropping first loses nothing even if the write is
        then refused (the job ended otherwise: lost, whose end drops them too). Any other
        finish is checked by the write first, so no worker can drop another's secrets."""

        def ending() -> Awaitable[job_leases.JobRecord]:
            return self._database.write_on_connection(
                job_leases.finish, job_id, worker_id, status, reason
            )

        if self._claimed.get(job_id) == worker_id:
            try:
                job = await self._keyd_sync.drop_while(job_id, ending)
            finally:
                self._claimed.pop(job_id, None)
        else:
            job = await ending()
            await self._keyd_sync.drop(job_id)
        log.info("job finished", job_id=job_id, status=str(status))
        return job

    # A member

    async def cancel(self, job_id: str) -> Job:
        cancelled = await self._database.write(job_leases.cancel, job_id)
        log.info("job cancel", job_id=job_id, at_once=cancelled.at_once)
        return cancelled.job

    async def read_log(self, job_id: str, position: int, *, offset: int, max_bytes: int) -> LogRead:
        return await self._database.read(job_leases.read_log, job_id, position, offset, max_bytes)

    async def list_artifacts(self, job_id: str, *, limit: int, offset: int) -> Sequence[Artifact]:
        return await self._database.read(_list_artifacts, job_id, limit, offset)

    # Lost workers

    async def sweep_lost(self) -> list[str]:
        """End the running jobs whose worker has been silent for `worker_timeout_s` with
        reason `worker lost`, and drop their secrets; the jobs this call ended."""
        # A read first: an idle sweep takes no turn of the database's one writer.
        if not await self._database.read(job_leases.any_lost, self.worker_timeout_s):
            return []
        ended = await self._database.write(job_leases.fail_lost, self.worker_timeout_s)
        for job_id in ended:
            log.warning("worker lost", job_id=job_id)
            self._claimed.pop(job_id, None)
            await self._keyd_sync.drop(job_id)
        return ended

    async def sweep_forever(self, interval_s: float) -> None:
        """`sweep_lost` every `interval_s` until cancelled."""
        while True:
            try:
                await self.sweep_lost()
            except DanubeError as exc:
                # A busy or unavailable database: the next round tries again.
                log.warning("lost-worker sweep failed", error=exc.code, detail=exc.message)
            except Exception:
                # The sweep must outlive any one bad round.
                log.exception("lost-worker sweep failed")
            await asyncio.sleep(interval_s)


def sweep_interval_s(worker_timeout_s: float) -> float:
    """A few seconds, and well inside the timeout, so a lost job ends soon after it."""
    return max(0.5, min(5.0, worker_timeout_s / 4))
