"""Starting and finishing jobs: the job's status and keyd's cache of its secrets, in step.

`start` loads the job's secrets into keyd under the hash of a fresh token, then marks the
job running; if keyd cannot take them, nothing changes and the caller gets 503. `finish`
records the final status, then drops the cache; if keyd is down then, the job finishes
anyway and the drop is retried in the background (the TTL bounds the exposure).
`reload_running_jobs` puts every running job's secrets back after keyd restarted.

keyd is never called inside a write unit of work: the database has one writer, and a
write transaction held open across a keyd round trip (up to `keyd.request_timeout_ms`
when keyd is down) would stall every other write of the process.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from danube_api.app_state import AppState
from danube_api.secret_store import secret_context
from danube_shared.db.repositories import JobRepository, ResolvedSecret, SecretRepository
from danube_shared.db.schema import Job, Status
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, KeydError, KeydUnavailable, NotFound
from danube_shared.keyd_protocol import token_sha256
from danube_shared.logs import get_logger

log = get_logger(__name__)

TOKEN_BYTES = 32


def _keyd_items(resolved: Sequence[ResolvedSecret]) -> list[tuple[str, bytes, str]]:
    return [(secret.name, secret.ciphertext, secret_context(secret.id)) for secret in resolved]


async def start_job(state: AppState, job_id: str) -> tuple[Job, str]:
    """Move a pending job to running with its secrets in keyd; returns the job and its
    token. `NotFound`, `Conflict` (not pending), `KeydUnavailable` (job stays pending)."""
    async with state.job_locks.hold(job_id):
        async with state.database.read() as session:
            job = await JobRepository(session).get(job_id)
            if job.status != Status.PENDING:
                raise Conflict(f"job {job_id} is {job.status}; only a pending job can start")
            resolved = await SecretRepository(session).resolve_for_job(job_id)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = token_sha256(token)
        ttl_s = state.settings.keyd.cache_ttl_s
        # Taken before the load, so the stored expiry is never later than keyd's own.
        expire_at = utcnow() + timedelta(seconds=ttl_s)
        await state.keyd.job_load(job_id, digest, ttl_s, _keyd_items(resolved))
        try:
            async with state.database.write() as session:
                job = await JobRepository(session).start(
                    job_id, token_sha256=digest, secrets_expire_at=expire_at
                )
        except BaseException:
            # The job did not become running: its secrets must not stay cached.
            await _drop_or_retry(state, job_id)
            raise
    log.info("job started", job_id=job_id, secret_count=len(resolved))
    return job, token


async def finish_job(state: AppState, job_id: str, status: Status) -> Job:
    """Move a running job (or a pending one, to cancelled) to `status` and drop its
    secrets from keyd. `NotFound`, `Conflict` (illegal transition)."""
    async with state.job_locks.hold(job_id):
        async with state.database.write() as session:
            jobs = JobRepository(session)
            was_running = (await jobs.get(job_id)).status == Status.RUNNING
            job = await jobs.finish(job_id, status)
        if was_running:
            await _drop_or_retry(state, job_id)
    log.info("job finished", job_id=job_id, status=str(status))
    return job


async def _drop_or_retry(state: AppState, job_id: str) -> None:
    try:
        await state.keyd.job_drop(job_id)
    except KeydUnavailable:
        log.warning("keyd drop failed; retrying in the background", job_id=job_id)
        state.drop_retries.schedule(job_id)
    except KeydError as exc:
        log.warning("keyd drop refused", job_id=job_id, error=exc.code, detail=exc.message)


@dataclass(frozen=True, slots=True)
class ReloadCounts:
    jobs: int
    secret_count: int
    expired: int


async def reload_running_jobs(state: AppState) -> ReloadCounts:
    """Load every running job's secrets into keyd again, with the stored token hash and
    what is left of the TTL; jobs whose secrets already expired are skipped. Raises
    `KeydError` if keyd fails (the caller tries again later).

    A start in flight may have loaded the old keyd and commit only after the list below is
    read: such jobs hold their lock now, so they are waited for and loaded too."""
    in_flight = state.job_locks.active()
    now = utcnow()
    async with state.database.read() as session:
        plans = [
            await _reload_plan(session, job, now)
            for job in await JobRepository(session).list_running()
        ]
    loaded = {plan.job_id for plan in plans}
    for job_id in sorted(in_flight - loaded):
        async with state.job_locks.hold(job_id), state.database.read() as session:
            try:
                job = await JobRepository(session).get(job_id)
            except NotFound:
                continue  # a job id that named nothing (its start answered 404)
            if job.status == Status.RUNNING:
                plans.append(await _reload_plan(session, job, utcnow()))
    secret_count = 0
    for plan in plans:
        if plan.expired:
            continue
        async with state.job_locks.hold(plan.job_id):
            await state.keyd.job_load(plan.job_id, plan.token_sha256, plan.ttl_s, plan.secrets)
        secret_count += len(plan.secrets)
    live = [plan.job_id for plan in plans if not plan.expired]
    await _drop_finished_since(state, live)
    return ReloadCounts(jobs=len(live), secret_count=secret_count, expired=len(plans) - len(live))


@dataclass(frozen=True, slots=True)
class _ReloadPlan:
    job_id: str
    token_sha256: bytes
    ttl_s: int
    secrets: list[tuple[str, bytes, str]]

    @property
    def expired(self) -> bool:
        return self.ttl_s < 1


async def _reload_plan(session: AsyncSession, job: Job, now: datetime) -> _ReloadPlan:
    if job.token_sha256 is None or job.secrets_expire_at is None:
        return _ReloadPlan(job.id, b"", 0, [])
    ttl_s = int((job.secrets_expire_at - now).total_seconds())
    if ttl_s < 1:
        return _ReloadPlan(job.id, b"", 0, [])
    resolved = await SecretRepository(session).resolve_for_job(job.id)
    return _ReloadPlan(job.id, job.token_sha256, ttl_s, _keyd_items(resolved))


async def _drop_finished_since(state: AppState, job_ids: Sequence[str]) -> None:
    """A job that finished between the list above and its load was dropped before the
    load: drop it again."""
    if not job_ids:
        return
    async with state.database.read() as session:
        jobs = JobRepository(session)
        still_running = {job.id for job in await jobs.list_running()}
    for job_id in job_ids:
        if job_id not in still_running:
            async with state.job_locks.hold(job_id):
                await _drop_or_retry(state, job_id)
