"""keyd's per-job cache of decrypted secrets.

A job's plaintexts live here, in `bytearray`s, from `job_load` until `job_drop` or their
deadline, whichever comes first; then they are overwritten with zeros before the buffers
are released. (That is what Python lets us overwrite: copies the interpreter or a library
made on the way, such as a received frame, are out of our reach.) Deadlines are kept in a
heap so that the server loop can sleep exactly until the next one and reap it even when
nobody asks for the job.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import count

from danube_keyd.wiping import zero


class JobNotCached(LookupError):
    """No such job in the cache (never loaded, dropped, or expired)."""


class TokenMismatch(PermissionError):
    """The presented token's SHA-256 differs from the one the job was loaded with."""


# What a `job_secrets` reply can need besides the names and values: its envelope (`v`,
# `id`, `ok`, `secrets` and their msgpack headers, at most 42 bytes) with room to spare,
# and per secret a name's and a value's msgpack headers (at most 5 bytes each).
_REPLY_ENVELOPE_BYTES = 128
_REPLY_BYTES_PER_SECRET = 10


class CacheFull(OverflowError):
    """The cache already holds its maximum number of jobs, or the job's plaintexts would
    take it past its byte cap. No other job is evicted to make room."""


@dataclass(slots=True)
class _Job:
    token_sha256: bytes
    deadline: float
    generation: int
    secrets: dict[str, bytearray] = field(default_factory=dict[str, bytearray])
    size: int = 0
    reply_capacity: int = 0

    def wipe(self) -> None:
        for value in self.secrets.values():
            zero(value)
        self.secrets.clear()


class SecretCache:
    """Jobs' plaintext secrets with a per-job token hash and deadline."""

    def __init__(
        self,
        max_ttl_s: float,
        *,
        max_jobs: int,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_ttl_s = max_ttl_s
        self._max_jobs = max_jobs
        self.max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        # (deadline, generation, job_id); stale rows (dropped or replaced jobs) are
        # skipped when they surface, so replacing a job never searches the heap.
        self._deadlines: list[tuple[float, int, str]] = []
        self._generations = count()

    @property
    def max_ttl_s(self) -> float:
        return self._max_ttl_s

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def plaintext_bytes(self) -> int:
        """Plaintext bytes held, all jobs together (what `max_bytes` caps)."""
        return self._bytes

    def secret_count(self) -> int:
        return sum(len(job.secrets) for job in self._jobs.values())

    def load(
        self, job_id: str, token_sha256: bytes, ttl_s: float, secrets: Mapping[str, bytearray]
    ) -> int:
        """Keep `secrets` (the cache owns the buffers from now on) for min(ttl_s, the
        cache's cap) seconds, replacing any job cached under the same id."""
        if job_id not in self._jobs and len(self._jobs) >= self._max_jobs:
            raise CacheFull(f"the cache holds {self._max_jobs} jobs already")
        size = sum(len(value) for value in secrets.values())
        replaced = self._jobs.get(job_id)
        others = self._bytes - (replaced.size if replaced is not None else 0)
        if self.max_bytes is not None and others + size > self.max_bytes:
            raise CacheFull(f"the cache would hold over {self.max_bytes} plaintext bytes")
        self._forget(job_id)
        generation = next(self._generations)
        deadline = self._clock() + min(ttl_s, self._max_ttl_s)
        # A name's UTF-8 takes at most 4 bytes per character.
        capacity = (
            _REPLY_ENVELOPE_BYTES
            + size
            + sum(4 * len(name) + _REPLY_BYTES_PER_SECRET for name in secrets)
        )
        self._jobs[job_id] = _Job(token_sha256, deadline, generation, dict(secrets), size, capacity)
        self._bytes += size
        heapq.heappush(self._deadlines, (deadline, generation, job_id))
        return len(secrets)

    def drop(self, job_id: str) -> bool:
        """Forget the job and zero its plaintexts; False if it was not cached."""
        return self._forget(job_id)

    def _forget(self, job_id: str) -> bool:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        self._bytes -= job.size
        job.wipe()
        return True

    def secrets_for(self, job_id: str, token: str) -> Mapping[str, bytearray]:
        """The job's secrets if `token` is its token. The mapping is the cache's own:
        read it before the cache is next changed."""
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotCached(job_id)
        if job.deadline <= self._clock():
            self.drop(job_id)
            raise JobNotCached(job_id)
        presented = hashlib.sha256(token.encode()).digest()
        if not hmac.compare_digest(presented, job.token_sha256):
            raise TokenMismatch(job_id)
        return job.secrets

    def reply_capacity(self, job_id: str) -> int:
        """Bytes that always hold the msgpack `job_secrets` reply of the cached job (0 if
        it is not cached). The reply is encoded into a buffer of this size made up front,
        so the encoder never grows it: a grown buffer would leave the plaintext written
        so far in the block it gave back to the allocator, where `zero` cannot reach."""
        job = self._jobs.get(job_id)
        return 0 if job is None else job.reply_capacity

    def reap(self) -> int:
        """Drop every job whose deadline has passed; returns how many were dropped."""
        now = self._clock()
        reaped = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, generation, job_id = heapq.heappop(self._deadlines)
            job = self._jobs.get(job_id)
            if job is not None and job.generation == generation:
                self._forget(job_id)
                reaped += 1
        return reaped

    def seconds_until_next_deadline(self) -> float | None:
        """How long the server may sleep before `reap` has work; None when empty."""
        while self._deadlines:
            deadline, generation, job_id = self._deadlines[0]
            job = self._jobs.get(job_id)
            if job is not None and job.generation == generation:
                return max(deadline - self._clock(), 0.0)
            heapq.heappop(self._deadlines)  # a dropped or replaced job's stale row
        return None

    def clear(self) -> None:
        """Zero and forget everything (keyd's shutdown)."""
        for job in self._jobs.values():
            job.wipe()
        self._jobs.clear()
        self._deadlines.clear()
        self._bytes = 0
