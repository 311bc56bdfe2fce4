"""Measure how concurrent writers fare under each way of beginning write transactions.

    uv run python -m benchmarks.write_strategies

Not a test (it asserts nothing and its numbers depend on the machine): the figures behind
the choice written down in `danube_shared/db/engine.py`. Each strategy runs the same
1000 `JobRepository.create` transactions (one SELECT, then INSERTs of a job and its three
steps) on a freshly migrated database, split among N concurrent writers, through the same
engines, pool and connection hooks as `Database`:

- deferred: plain BEGIN (DEFERRED), each writer on its own pooled aiosqlite connection,
  the unit run through `AsyncSession.run_sync`;
- immediate: the same, but BEGIN IMMEDIATE;
- writer thread: `Database.write()`, the queue of the one writer thread (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from danube_migrator.runner import migrate
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import BEGIN_IMMEDIATE, Database
from danube_shared.db.repositories import JobRepository, PipelineRepository, TeamRepository
from danube_shared.errors import DanubeError

TRANSACTIONS = 1000
WRITER_COUNTS = (1, 8, 32, 50)


def create_job(session: Session, pipeline_id: str) -> None:
    JobRepository(session).create(pipeline_id)


async def create_job_deferred(db: Database, pipeline_id: str) -> None:
    async with AsyncSession(db.engine) as session, session.begin():
        await session.run_sync(create_job, pipeline_id)


async def create_job_immediate(db: Database, pipeline_id: str) -> None:
    async with AsyncSession(db.engine) as session:
        await session.connection(execution_options=BEGIN_IMMEDIATE)
        await session.run_sync(create_job, pipeline_id)
        await session.commit()


async def create_job_writer_thread(db: Database, pipeline_id: str) -> None:
    await db.write(create_job, pipeline_id)


STRATEGIES: dict[str, Callable[[Database, str], Awaitable[None]]] = {
    "deferred": create_job_deferred,
    "immediate": create_job_immediate,
    "writer thread": create_job_writer_thread,
}


def make_pipeline(session: Session, team_name: str) -> str:
    team = TeamRepository(session).create(name=team_name)
    steps = [{"name": f"step {i}", "command": "true"} for i in range(3)]
    return (
        PipelineRepository(session)
        .create(
            team.id,
            name="bench",
            steps=steps,  # pyright: ignore[reportArgumentType] -- plain dicts are StepDefinitions
        )
        .id
    )


async def run(db: Database, name: str, writers: int) -> str:
    pipeline_id = await db.write(make_pipeline, f"{name}-{writers}")
    create = STRATEGIES[name]
    latencies: list[float] = []
    errors = 0

    async def writer(count: int) -> None:
        nonlocal errors
        for _ in range(count):
            started = time.perf_counter()
            try:
                await create(db, pipeline_id)
            except (sa_exc.OperationalError, DanubeError):
                errors += 1
            else:
                latencies.append(time.perf_counter() - started)

    per_writer = TRANSACTIONS // writers
    started = time.perf_counter()
    await asyncio.gather(*(writer(per_writer) for _ in range(writers)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000

    max_ms = latencies[-1] * 1000 if latencies else float("nan")
    return (
        f"{writers:>7}  {name:<14} {len(latencies) / elapsed:>6.0f} {percentile(0.5):>8.1f} "
        f"{percentile(0.99):>8.1f} {max_ms:>8.1f} {errors:>12}"
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        settings = DatabaseSettings(path=Path(directory) / "danube.db")
        await migrate(settings)
        db = Database.open(settings)
        try:
            print("writers  strategy         tx/s   p50 ms   p99 ms   max ms  lock errors")
            for writers in WRITER_COUNTS:
                for name in STRATEGIES:
                    print(await run(db, name, writers), flush=True)
        finally:
            await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
