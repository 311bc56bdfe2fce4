"""A `KeydControl` wrapper that turns a spurious `CancelledError` into `KeydUnavailable`.

Why: `KeydControlClient` resets its socket when a request times out with keyd silent,
and closing a pyzmq asyncio socket cancels the send futures of the other requests in
flight. Their coroutines then see `CancelledError` although nobody cancelled their task:
a request handler would end without any response, and the keyd watch task would die.
Here a `CancelledError` whose task is not being cancelled (`Task.cancelling() == 0`)
becomes the `KeydUnavailable` it really is; a real cancellation passes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from danube_shared.errors import KeydUnavailable
from danube_shared.keyd_client import KeydControl, PingReply

_T = TypeVar("_T")


async def _guarded(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise KeydUnavailable(
            "the keyd connection was reset while this request was in flight; retry"
        ) from None


class GuardedKeyd:
    """`inner`, with every call guarded as the module docstring says."""

    def __init__(self, inner: KeydControl) -> None:
        self.inner = inner

    async def ping(self) -> PingReply:
        return await _guarded(self.inner.ping())

    async def encrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        return await _guarded(self.inner.encrypt(items))

    async def decrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        return await _guarded(self.inner.decrypt(items))

    async def job_load(
        self,
        job_id: str,
        token_sha256: bytes,
        ttl_s: int,
        secrets: Sequence[tuple[str, bytes, str]],
    ) -> int:
        return await _guarded(self.inner.job_load(job_id, token_sha256, ttl_s, secrets))

    async def job_drop(self, job_id: str) -> bool:
        return await _guarded(self.inner.job_drop(job_id))

    async def stats(self) -> dict[str, Any]:
        return await _guarded(self.inner.stats())

    async def close(self) -> None:
        await self.inner.close()
