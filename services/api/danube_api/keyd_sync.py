"""Keeping keyd's cache of job secrets in step with the jobs in the database: everything
that does so lives here.

- `load_claimed` loads a just-claimed job's secrets into keyd under its token's hash (the
  claim in `job_service` committed the job as running, with that hash, just before).
- `drop` drops a job's secrets once it ended; if keyd is down then, the drop is retried
  in the background (`DropRetries`; keyd's TTL bounds the exposure).
- The keyd watch (`watch`, one `check` a second) pings keyd and, whenever it sees a boot
  id it has not loaded the running jobs into, loads them again (DESIGN 5): only the jobs
  claimed through this API's node (`api.node`), since every other node has a keyd of its
  own that its workers ask (DESIGN 15). The first boot
  id it sees after the API starts counts as new: keyd may have restarted while the API
  was down. Each job is loaded on its own, so a job keyd refuses never blocks the others.
- `JobLocks` order all of these per job.

keyd is never called inside a write unit of work: the database has one writer, and a
write transaction held open across a keyd round trip (up to `keyd.request_timeout_ms`
when keyd is down) would stall every other write of the process.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.repositories import JobRepository, ResolvedSecret, SecretRepository
from danube_shared.db.schema import Job, Status
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import (
    DanubeError,
    KeydError,
    KeydUnavailable,
    NotFound,
)
from danube_shared.keyd_control_client import KeydControl
from danube_shared.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

PING_INTERVAL_S: Final = 1.0
# A failed `job_drop` is retried after 1, 2, 4, 8 and 16 s. keyd's TTL bounds the
# exposure if every retry fails too.
DROP_RETRY_DELAYS_S: Final = (1.0, 2.0, 4.0, 8.0, 16.0)


class JobLocks:
    """One asyncio lock per job id, alive while someone holds or awaits it.

    A claim's load, an end's drop and the reload of a job take it, so that keyd's cache
    follows the job's status: a reload cannot slip a stale load between a drop and the
    end it follows. (Across several API processes the database's status checks still hold;
    only this ordering is per process.)
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def active(self) -> frozenset[str]:
        """The jobs whose lock someone holds or awaits right now."""
        return frozenset(self._locks.keys())

    def hold(self, job_id: str) -> asyncio.Lock:
        """The job's lock, to hold with `async with`: the caller's reference keeps it alive
        while it is held or awaited. (The lock itself, not a generator-based context
        manager around it: every claim and finish takes one.)"""
        lock = self._locks.get(job_id)
        if lock is None:
            lock = self._locks[job_id] = asyncio.Lock()
        return lock


class DropRetries:
    """Background retries of `job_drop` for jobs that finished while keyd was down."""

    def __init__(
        self, keyd: KeydControl, delays_s: tuple[float, ...] = DROP_RETRY_DELAYS_S
    ) -> None:
        self._keyd = keyd
        self._delays_s = delays_s
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, job_id: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._retry(job_id), name=f"keyd-drop-{job_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def _retry(self, job_id: str) -> None:
        for attempt, delay in enumerate(self._delays_s, start=1):
            await asyncio.sleep(delay)
            try:
                await self._keyd.job_drop(job_id)
            except KeydUnavailable:
                continue
            except KeydError as exc:
                log.warning("keyd drop refused", job_id=job_id, error=exc.code, detail=exc.message)
                return
            log.info("keyd drop retried", job_id=job_id, attempt=attempt)
            return
        log.warning(
            "keyd drop abandoned; the job's secrets expire with their TTL",
            job_id=job_id,
            attempts=len(self._delays_s),
        )

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class ReloadCounts:
    jobs: int
    secret_count: int
    expired: int
    refused: int = 0


@dataclass(frozen=True, slots=True)
class _Load:
    """What keyd's `job_load` of one running job takes; `ttl_s < 1` means expired."""

    job_id: str
    token_sha256: bytes
    ttl_s: int
    secrets: list[ResolvedSecret]


# The units of work (run on the database's sessions).


def _running_job_ids(session: Session, node: str) -> list[str]:
    statement = (
        select(Job.id)
        .where(Job.status == Status.RUNNING, Job.node == node)
        .order_by(Job.started_at, Job.id)
    )
    return list(session.scalars(statement))


def _load_of(session: Session, job_id: str, node: str, now: datetime) -> _Load | None:
    """The load of the job if it is running through `node` (else None); no secrets if
    they expired."""
    try:
        job = JobRepository(session).get(job_id)
    except NotFound:
        return None  # a job id that named nothing
    if job.status != Status.RUNNING or job.node != node:
        return None
    if job.token_sha256 is None or job.secrets_expire_at is None:
        return _Load(job.id, b"", 0, [])
    ttl_s = int((job.secrets_expire_at - now).total_seconds())
    if ttl_s < 1:
        return _Load(job.id, b"", 0, [])
    resolved = SecretRepository(session).resolve_for_job(job.id)
    return _Load(job.id, job.token_sha256, ttl_s, resolved)


class KeydSync:
    """The lifespan's one keeper of keyd's cache: built with the database, the keyd
    client, the TTL of a job's cached secrets and this API's node name (`api.node`)."""

    def __init__(
        self, database: Database, keyd: KeydControl, *, cache_ttl_s: int, node: str
    ) -> None:
        self._database = database
        self._node = node
        self._keyd = keyd
        self._cache_ttl_s = cache_ttl_s
        self.locks = JobLocks()
        self.drop_retries = DropRetries(keyd)
        # The keyd boot id whose cache holds every running job's secrets.
        self.boot_id: str | None = None

    async def load_claimed(self, job_id: str, digest: bytes, resolved: list[ResolvedSecret]) -> int:
        """Load a just-claimed job's secrets (`resolved`, team's overridden by pipeline's,
        read by the claim's own transaction) into keyd under `digest`, for the claim's TTL;
        the number loaded. `KeydUnavailable`, `KeydRejected` (the caller puts the job back
        or fails it)."""
        async with self.locks.hold(job_id):
            await self._keyd.job_load(job_id, digest, self._cache_ttl_s, resolved)
        log.info("job secrets loaded", job_id=job_id, secret_count=len(resolved))
        return len(resolved)

    async def drop(self, job_id: str) -> None:
        """Drop an ended job's secrets from keyd, retrying in the background if keyd is
        down."""
        async with self.locks.hold(job_id):
            await self._drop_or_retry(job_id)

    async def drop_while(self, job_id: str, ending: Callable[[], Awaitable[T]]) -> T:
        """Drop the job's secrets while `ending()` (the write that ends the job) runs, and
        its outcome once both are done: keyd's round trip and the database's overlap
        instead of adding up. The job's lock is held throughout, so a reload cannot load
        the job between the drop and the end it goes with (it reads the job's status
        under the lock, after the end is committed). The drop is made whatever `ending`
        does; the caller uses this only where that is safe (see `JobService.finish`)."""
        async with self.locks.hold(job_id):
            dropping = asyncio.ensure_future(self._drop_or_retry(job_id))
            try:
                return await ending()
            finally:
                await dropping

    async def check(self) -> None:
        """One round of the watch: ping keyd, reload the running jobs if its boot id is
        new to us. A failed reload is tried again at the next round; the boot id counts as
        loaded only once every running job's load was answered."""
        try:
            boot_id = (await self._keyd.ping()).boot_id
        except DanubeError as exc:
            log.debug("keyd ping failed", error=exc.code)
            return
        if boot_id == self.boot_id:
            return
        try:
            counts = await self.reload_running_jobs()
        except DanubeError as exc:
            log.warning(
                "keyd reload failed; retrying", boot_id=boot_id, error=exc.code, detail=exc.message
            )
            return
        self.boot_id = boot_id
        log.info(
            "keyd cache reloaded",
            boot_id=boot_id,
            jobs=counts.jobs,
            secret_count=counts.secret_count,
            expired_jobs=counts.expired,
            refused_jobs=counts.refused,
        )

    async def watch(self, interval_s: float = PING_INTERVAL_S) -> None:
        """Run `check` every `interval_s` until cancelled."""
        while True:
            try:
                await self.check()
            except Exception:
                # The watcher must outlive any one bad round.
                log.exception("keyd watch round failed")
            await asyncio.sleep(interval_s)

    async def reload_running_jobs(self) -> ReloadCounts:
        """Load every running job of this node's secrets into keyd again, one job at a time, with the
        stored token hash and what is left of the TTL; jobs whose secrets already expired
        are skipped, and a job keyd refuses is logged and skipped: one job never keeps the
        others out. Raises `KeydUnavailable` if keyd stops answering, and the database's
        `DanubeError`s (the caller tries again later).

        A claim's load in flight may have reached the old keyd: such jobs hold their lock
        now, so they are waited for and loaded again too."""
        in_flight = self.locks.active()
        listed = await self._database.read(_running_job_ids, self._node)
        job_ids = listed + sorted(in_flight - set(listed))
        loaded = secret_count = expired = refused = 0
        for job_id in job_ids:
            async with self.locks.hold(job_id):
                load = await self._database.read(_load_of, job_id, self._node, utcnow())
                if load is None:
                    continue
                if load.ttl_s < 1:
                    expired += 1
                    continue
                try:
                    await self._keyd.job_load(job_id, load.token_sha256, load.ttl_s, load.secrets)
                except KeydUnavailable:
                    raise
                except KeydError as exc:
                    refused += 1
                    log.warning(
                        "keyd refused a job's reload",
                        job_id=job_id,
                        error=exc.code,
                        detail=exc.message,
                    )
                    continue
            loaded += 1
            secret_count += len(load.secrets)
        return ReloadCounts(
            jobs=loaded, secret_count=secret_count, expired=expired, refused=refused
        )

    async def aclose(self) -> None:
        """Cancel the pending drop retries."""
        await self.drop_retries.aclose()

    async def _drop_or_retry(self, job_id: str) -> None:
        try:
            await self._keyd.job_drop(job_id)
        except KeydUnavailable:
            log.warning("keyd drop failed; retrying in the background", job_id=job_id)
            self.drop_retries.schedule(job_id)
        except KeydError as exc:
            log.warning("keyd drop refused", job_id=job_id, error=exc.code, detail=exc.message)
