"""Run a synchronous unit of work (a function of a `Session`, DESIGN 6) on a `Database`.

The repositories born with DESIGN 6 (tokens, workers) take a synchronous `Session`; this
is how their tests run them, each in one write or read transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from danube_shared.db.engine import Database

T = TypeVar("T")


async def write_unit(database: Database, unit: Callable[[Session], T]) -> T:
    async with database.write() as session:
        return await session.run_sync(unit)


async def read_unit(database: Database, unit: Callable[[Session], T]) -> T:
    async with database.read() as session:
        return await session.run_sync(unit)
