"""What the app's lifespan builds and every request shares: the settings, the database, the
keyd client, and the two small pieces of coordination the job lifecycle needs (a lock per
job, and the retries of failed `job_drop`s). Routes reach it through `danube_api.deps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Final

from danube_shared.config import Settings
from danube_shared.db.engine import Database
from danube_shared.errors import KeydError, KeydUnavailable
from danube_shared.keyd_control_client import KeydControl
from danube_shared.logs import get_logger

log = get_logger(__name__)

# A failed `job_drop` is retried after 1, 2, 4, 8 and 16 s. keyd's TTL bounds the
# exposure if every retry fails too.
DROP_RETRY_DELAYS_S: Final = (1.0, 2.0, 4.0, 8.0, 16.0)


class JobLocks:
    """One asyncio lock per job id, alive while someone holds or awaits it.

    `start`, `finish` and the keyd reload of a job take it, so that keyd's cache and the
    job's status change together: a `job_load` of a start that then loses cannot
    overwrite the token of the start that won, and a finish cannot slip between a start's
    `job_load` and its commit. (Across several API processes the database's status
    checks still hold; only this ordering is per process.)
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def active(self) -> frozenset[str]:
        """The jobs whose lock someone holds or awaits right now."""
        return frozenset(self._locks.keys())

    @contextlib.asynccontextmanager
    async def hold(self, job_id: str) -> AsyncGenerator[None]:
        lock = self._locks.get(job_id)
        if lock is None:
            lock = self._locks[job_id] = asyncio.Lock()
        async with lock:
            yield


class KeydDropRetries:
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


@dataclass(slots=True)
class AppState:
    """Everything a request may use, built once by the lifespan."""

    settings: Settings
    database: Database
    keyd: KeydControl
    job_locks: JobLocks = field(default_factory=JobLocks)
    drop_retries: KeydDropRetries = field(init=False)
    # The keyd boot id whose cache holds every running job's secrets (see keyd_watch).
    keyd_boot_id: str | None = None

    def __post_init__(self) -> None:
        self.drop_retries = KeydDropRetries(self.keyd)
