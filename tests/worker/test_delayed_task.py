"""`DelayedTask`: a coroutine started only once its delay has passed, or never if it is
cancelled before."""

from __future__ import annotations

import asyncio

from danube_worker.delayed_task import DelayedTask

# Hang guards only: nothing asserts how fast anything is.
GUARD_S = 30.0


def test_cancelled_before_its_delay_the_coroutine_never_runs() -> None:
    ran: list[str] = []

    async def body() -> None:
        ran.append("ran")

    async def scenario() -> bool:
        delayed = DelayedTask(3600, body)
        delayed.cancel()
        await delayed.wait()
        await asyncio.sleep(0.05)  # a few turns of the loop
        return delayed.started

    assert asyncio.run(scenario()) is False
    assert ran == []


def test_after_its_delay_the_coroutine_runs_as_a_task() -> None:
    async def scenario() -> bool:
        done = asyncio.Event()

        async def body() -> None:
            done.set()

        delayed = DelayedTask(0.01, body)
        await asyncio.wait_for(done.wait(), GUARD_S)
        await delayed.wait()
        return delayed.started

    assert asyncio.run(scenario()) is True


def test_cancel_stops_a_started_task_and_wait_returns_once_it_is_over() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        running = asyncio.Event()

        async def body() -> None:
            running.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        delayed = DelayedTask(0, body)
        await asyncio.wait_for(running.wait(), GUARD_S)
        delayed.cancel()
        await asyncio.wait_for(delayed.wait(), GUARD_S)
        return seen

    assert asyncio.run(scenario()) == ["cancelled"]
