"""A throwaway PostgreSQL server for the benchmarks' informational PostgreSQL lines
(DESIGN 15, issue 14): `.ci/postgres start` in a short temporary directory (a Unix
socket, trust auth), one empty database per measurement, stopped and removed at the end.

The server is CI's test server: fsync, synchronous_commit and full_page_writes are off,
so its figures are an upper bound for a durable server on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

CI_POSTGRES = Path(__file__).resolve().parent.parent / ".ci" / "postgres"


class PostgresUnavailable(Exception):
    """The server could not be started (its binaries are absent, say): the message is
    `.ci/postgres`'s own."""


@contextlib.contextmanager
def throwaway_postgresql() -> Iterator[str]:
    """A running server; yields the URL of its `danube` database."""
    parent = Path(tempfile.mkdtemp(dir="/tmp", prefix="dbpg"))
    # The server's account (not root, which PostgreSQL refuses) must reach the directory.
    parent.chmod(0o755)
    directory = parent / "pg"
    started = subprocess.run(
        [str(CI_POSTGRES), "start", str(directory)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    try:
        if started.returncode != 0:
            raise PostgresUnavailable(started.stderr.strip() or "`.ci/postgres start` failed")
        yield started.stdout.strip()
    finally:
        subprocess.run(
            [str(CI_POSTGRES), "stop", str(directory)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(parent, ignore_errors=True)


def new_database(url: str, prefix: str) -> str:
    """A new empty database on the server of `url`; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        engine = create_async_engine(
            make_url(url), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with engine.connect() as connection:
                await connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            await engine.dispose()

    asyncio.run(create())
    return make_url(url).set(database=name).render_as_string(hide_password=False)
