"""`GuardedKeyd`: a keyd call cancelled under a task that nobody cancelled is keyd being
unavailable; a real cancellation of the task still cancels it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from danube_api.keyd_guard import GuardedKeyd
from danube_shared.errors import KeydUnavailable
from danube_shared.keyd_client import PingReply
from tests.api.fake_keyd import FakeKeyd


class CancelledUnderneath(FakeKeyd):
    """A keyd client whose in-flight request's future is cancelled by someone else, as
    closing a pyzmq socket does to the sends of other requests."""

    async def encrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)
        return await future

    async def ping(self) -> PingReply:
        await asyncio.sleep(10)
        return await super().ping()


async def test_a_request_cancelled_underneath_raises_keyd_unavailable():
    guarded = GuardedKeyd(CancelledUnderneath())
    with pytest.raises(KeydUnavailable):
        await guarded.encrypt([(b"x", "secret:1")])


async def test_cancelling_the_calling_task_still_cancels_it():
    guarded = GuardedKeyd(CancelledUnderneath())
    task = asyncio.create_task(guarded.ping())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_calls_and_close_reach_the_wrapped_client():
    inner = FakeKeyd()
    guarded = GuardedKeyd(inner)
    (ciphertext,) = await guarded.encrypt([(b"x", "secret:1")])
    assert await guarded.decrypt([(ciphertext, "secret:1")]) == [b"x"]
    assert (await guarded.ping()).boot_id == inner.boot_id
    await guarded.close()
    assert inner.closed
