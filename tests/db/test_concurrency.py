"""Concurrent writers and crashed writers lose nothing and never see `database is locked`."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import JobRepository, NewJob, TeamRepository
from danube_shared.db.schema import Job, Pipeline, Team
from tests.support.postgres import sqlite_only

WRITER_SCRIPT = Path(__file__).with_name("writer_process.py")


async def test_fifty_concurrent_writers_commit_every_row_without_lock_errors(
    database: Database, pipeline: Pipeline
):
    """Each writer reads the pipeline's last job number and writes the next one: the
    pattern that fails with `database is locked` when transactions begin DEFERRED."""

    async def writer(index: int) -> list[str]:
        made: list[str] = []
        for round_ in range(3):

            def writes(session: Session, name: str) -> NewJob:
                job = JobRepository(session).create(pipeline.id)
                TeamRepository(session).create(name=name)
                return job

            job = await database.write(writes, f"writer-{index}-{round_}")
            made.append(job.id)
        return made

    results = await asyncio.gather(*(writer(index) for index in range(50)), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    assert failures == []
    committed = {job_id for result in results if isinstance(result, list) for job_id in result}

    def reads(session: Session) -> Any:
        stored = {row.id: row.number for row in session.execute(select(Job.id, Job.number))}
        teams = session.scalars(select(Team.name).where(Team.name.like("writer-%")))
        team_count = len(teams.all())
        return stored, team_count

    stored, team_count = await database.read(reads)
    assert set(stored) == committed
    assert sorted(stored.values()) == list(range(1, 151))
    assert team_count == 150


async def test_two_processes_worth_of_engines_write_to_one_file_without_lock_errors(
    database_settings: DatabaseSettings,
):
    """Separate `Database`s have separate queues; BEGIN IMMEDIATE and the busy timeout
    keep their writers from failing each other."""
    first, second = Database.open(database_settings), Database.open(database_settings)
    try:

        async def writer(db: Database, name: str) -> None:
            await db.write(lambda session: TeamRepository(session).create(name=name))

        await asyncio.gather(
            *(writer(first, f"first-{i}") for i in range(25)),
            *(writer(second, f"second-{i}") for i in range(25)),
        )
        names = await first.read(lambda session: set((session.scalars(select(Team.name))).all()))
        assert len(names) == 50
    finally:
        await first.dispose()
        await second.dispose()


@pytest.fixture
def start_writer() -> Iterator[list[subprocess.Popen[str]]]:
    """Started writer processes; whatever happens, each is killed by pid afterwards."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@sqlite_only("recovery of the WAL of a killed writer")
def test_a_writer_killed_mid_stream_loses_no_committed_row(
    migrated_db_path: Path, start_writer: list[subprocess.Popen[str]]
):
    pipeline_id = asyncio.run(_make_pipeline(migrated_db_path))
    process = subprocess.Popen(
        [sys.executable, str(WRITER_SCRIPT), str(migrated_db_path), pipeline_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    start_writer.append(process)
    assert process.stdout is not None
    committed: list[str] = []
    while len(committed) < 150:
        line = process.stdout.readline()
        assert line, f"the writer stopped by itself (exit code {process.poll()})"
        committed.append(line.strip())

    os.kill(process.pid, signal.SIGKILL)  # while it is writing the next ones
    assert process.wait(timeout=10) == -signal.SIGKILL
    # Ids it printed before dying were committed too.
    committed.extend(line.strip() for line in process.stdout)

    connection = sqlite3.connect(migrated_db_path)  # recovers from the WAL left behind
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        stored = {row[0] for row in connection.execute("SELECT id FROM jobs")}
        artifacts = connection.execute(
            "SELECT count(*) FROM artifacts WHERE job_id IN (SELECT id FROM jobs)"
        ).fetchone()
        numbers = [row[0] for row in connection.execute("SELECT number FROM jobs ORDER BY number")]
    finally:
        connection.close()
    assert set(committed) <= stored
    assert artifacts == (len(stored),)  # no job without its artifact: no half transaction
    assert numbers == list(range(1, len(stored) + 1))


async def _make_pipeline(path: Path) -> str:
    db = Database.open(DatabaseSettings(path=path))
    try:

        def writes(session: Session) -> Any:
            team = TeamRepository(session).create(name="crash")
            session.add(
                pipeline := Pipeline(
                    team_id=team.id, name="p", steps=[{"name": "s", "command": "true"}]
                )
            )
            session.flush()
            return pipeline.id

        return await db.write(writes)
    finally:
        await db.dispose()
