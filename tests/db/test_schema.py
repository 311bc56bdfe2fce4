"""The schema as migrated: constraints, defaults, cascades and indexes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, inspect, select, text, update
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import (
    ArtifactRepository,
    NewJob,
    SecretRepository,
    SecretScope,
    TeamRepository,
    UserRepository,
)
from danube_shared.db.repositories.flushing import flush
from danube_shared.db.schema import (
    STEP_TIMEOUT_DEFAULT_S,
    ApiToken,
    Artifact,
    Base,
    Job,
    LogChunk,
    Pipeline,
    Secret,
    Status,
    Step,
    Team,
    TeamMember,
    TeamRole,
    User,
    Worker,
)
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, InvalidInput
from tests.support.postgres import sqlite_only


def count(session: Session, model: type[Base]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


async def test_the_migrated_tables_are_exactly_the_models(database: Database):
    async with database.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


async def test_secrets_have_no_column_that_could_hold_a_plaintext(database: Database):
    async with database.engine.connect() as connection:
        columns = await connection.run_sync(
            lambda sync: {column["name"] for column in inspect(sync).get_columns("secrets")}
        )
    assert columns == {
        "id",
        "team_id",
        "pipeline_id",
        "name",
        "ciphertext",
        "key_id",
        "created_at",
        "updated_at",
    }


async def test_job_and_step_status_default_to_pending_in_the_database(
    database: Database, pipeline: Pipeline
):
    job_id, step_id = new_id(), new_id()

    def writes(session: Session) -> Any:
        session.execute(
            text(
                "INSERT INTO jobs (id, pipeline_id, number, created_at) "
                "VALUES (:id, :pipeline_id, 1, '2026-01-01 00:00:00.000000')"
            ),
            {"id": job_id, "pipeline_id": pipeline.id},
        )
        session.execute(
            text(
                "INSERT INTO steps (id, job_id, position, name, command) "
                "VALUES (:id, :job_id, 0, 'only', 'true')"
            ),
            {"id": step_id, "job_id": job_id},
        )

    await database.write(writes)

    def reads(session: Session) -> Any:
        job = session.get_one(Job, job_id)
        step = session.get_one(Step, step_id)
        return job, step

    job, step = await database.read(reads)
    assert job.status == Status.PENDING
    assert step.status == Status.PENDING
    assert (job.started_at, job.finished_at, job.token_sha256, job.secrets_expire_at) == (
        None,
        None,
        None,
        None,
    )


async def test_the_columns_0002_added_have_their_defaults_in_the_database(
    database: Database, pipeline: Pipeline
):
    """Rows written without the new columns (as by older code, or raw SQL) get the
    documented defaults: not an admin, no cancel requested, a 3600 s timeout, no log."""
    job_id, step_id, user_id = new_id(), new_id(), new_id()

    def writes(session: Session) -> None:
        session.execute(
            text(
                "INSERT INTO users (id, username, display_name, created_at) "
                "VALUES (:id, 'ada', 'Ada', '2026-01-01 00:00:00.000000')"
            ),
            {"id": user_id},
        )
        session.execute(
            text(
                "INSERT INTO jobs (id, pipeline_id, number, created_at) "
                "VALUES (:id, :pipeline_id, 1, '2026-01-01 00:00:00.000000')"
            ),
            {"id": job_id, "pipeline_id": pipeline.id},
        )
        session.execute(
            text(
                "INSERT INTO steps (id, job_id, position, name, command) "
                "VALUES (:id, :job_id, 0, 'only', 'true')"
            ),
            {"id": step_id, "job_id": job_id},
        )

    await database.write(writes)

    def reads(session: Session) -> tuple[User, Job, Step, Pipeline]:
        return (
            session.get_one(User, user_id),
            session.get_one(Job, job_id),
            session.get_one(Step, step_id),
            session.get_one(Pipeline, pipeline.id),
        )

    user, job, step, stored_pipeline = await database.read(reads)
    assert user.is_admin is False
    assert (job.cancel_requested, job.worker_id, job.node, job.reason) == (False, None, None, None)
    assert (job.claimed_at, job.last_seen_at) == (None, None)
    assert (step.timeout_s, step.log_length) == (STEP_TIMEOUT_DEFAULT_S, 0)
    assert stored_pipeline.next_job_number == 1


@pytest.mark.parametrize(
    "owner", ["neither", "both"], ids=["a token of no one", "a token of a user and a worker"]
)
async def test_a_token_belongs_to_exactly_one_user_or_worker(database: Database, owner: str):
    def owners(session: Session) -> tuple[User, Worker]:
        user = UserRepository(session).create(username="ada", display_name="Ada")
        worker = Worker(name="w1")
        session.add(worker)
        session.flush()
        return user, worker

    user, worker = await database.write(owners)

    def add_token(session: Session) -> None:
        session.add(
            ApiToken(
                name="t",
                token_sha256=bytes(32),
                user_id=user.id if owner == "both" else None,
                worker_id=worker.id if owner == "both" else None,
            )
        )

    with pytest.raises(InvalidInput, match="ck_api_tokens_one_owner"):
        await database.write(add_token)


async def test_deleting_a_worker_deletes_its_tokens_and_unlinks_its_jobs(
    database: Database, job: Job
):
    def link_worker(session: Session) -> Worker:
        worker = Worker(name="w1")
        session.add(worker)
        session.flush()
        session.add(ApiToken(name="t", token_sha256=bytes(32), worker_id=worker.id))
        session.execute(
            update(Job).where(Job.id == job.id).values(worker_id=worker.id, node="node-a")
        )
        return worker

    worker = await database.write(link_worker)
    await database.write(
        lambda session: session.execute(delete(Worker).where(Worker.id == worker.id))
    )

    def reads(session: Session) -> tuple[Job, int]:
        return session.get_one(Job, job.id), count(session, ApiToken)

    stored, tokens = await database.read(reads)
    assert tokens == 0
    assert (stored.worker_id, stored.node) == (None, "node-a")


async def test_deleting_a_user_deletes_their_tokens(database: Database):
    def user_with_token(session: Session) -> User:
        user = UserRepository(session).create(username="ada", display_name="Ada")
        session.add(ApiToken(name="t", token_sha256=bytes(32), user_id=user.id))
        return user

    user = await database.write(user_with_token)
    await database.write(lambda session: session.execute(delete(User).where(User.id == user.id)))
    assert await database.read(lambda session: count(session, ApiToken)) == 0


async def test_a_log_offset_is_stored_once_per_step(database: Database, job: Job):
    step_id = await database.read(
        lambda session: session.scalars(select(Step.id).where(Step.job_id == job.id)).first()
    )

    def store_offset_0_twice(session: Session) -> None:
        for data in (b"first", b"again"):
            session.add(LogChunk(step_id=step_id, offset=0, data=data))
            flush(session, conflict="offset 0 is stored already")

    with pytest.raises(Conflict, match="offset 0 is stored already"):
        await database.write(store_offset_0_twice)


async def test_deleting_a_step_deletes_its_log(database: Database, job: Job):
    def log_every_step(session: Session) -> list[str]:
        step_ids = list(session.scalars(select(Step.id).where(Step.job_id == job.id)).all())
        session.add_all(LogChunk(step_id=step_id, offset=0, data=b"x") for step_id in step_ids)
        return step_ids

    step_ids = await database.write(log_every_step)
    await database.write(
        lambda session: session.execute(delete(Step).where(Step.id == step_ids[0]))
    )
    assert await database.read(lambda session: count(session, LogChunk)) == len(step_ids) - 1


async def test_a_new_row_gets_an_id_and_created_time_without_being_told(database: Database):
    def writes(session: Session) -> Any:
        team = Team(name="defaults")
        session.add(team)
        session.flush()
        return (team,)

    (team,) = await database.write(writes)
    assert len(team.id) == 36
    assert team.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("UPDATE jobs SET status = 'paused'", "ck_jobs_job_status"),
        ("UPDATE steps SET status = 'paused'", "ck_steps_step_status"),
        ("UPDATE jobs SET status = 'skipped'", "ck_jobs_status_not_skipped"),
        ("UPDATE steps SET timeout_s = 0", "ck_steps_timeout_s_in_range"),
        ("UPDATE steps SET timeout_s = 86401", "ck_steps_timeout_s_in_range"),
        ("UPDATE steps SET log_length = -1", "ck_steps_log_length_not_negative"),
        ("UPDATE pipelines SET next_job_number = 0", "ck_pipelines_next_job_number_positive"),
        ("UPDATE jobs SET number = 0", "ck_jobs_number_positive"),
        ("UPDATE steps SET position = -1", "ck_steps_position_not_negative"),
        ("UPDATE team_members SET role = 'admin'", "ck_team_members_role"),
        ("UPDATE artifacts SET size_bytes = -1", "ck_artifacts_size_not_negative"),
        ("UPDATE secrets SET team_id = NULL", "ck_secrets_one_scope"),
        ("UPDATE secrets SET pipeline_id = (SELECT id FROM pipelines)", "ck_secrets_one_scope"),
    ],
)
async def test_check_constraints_refuse_values_outside_their_domain(
    database: Database, job: NewJob, statement: str, constraint: str
):
    def writes(session: Session) -> Any:
        user = UserRepository(session).create(username="ada", display_name="Ada")
        TeamRepository(session).put_member(
            (session.get_one(Pipeline, job.pipeline_id)).team_id, user.id, TeamRole.OWNER
        )
        ArtifactRepository(session).create(
            job.id, name="log", size_bytes=1, sha256="0" * 64, uri="file:///log"
        )
        team_id = (session.get_one(Pipeline, job.pipeline_id)).team_id
        SecretRepository(session).upsert(
            SecretScope.for_team(team_id),
            "TOKEN",
            secret_id=new_id(),
            ciphertext=b"\x01ciphertext",
            key_id=b"kid!",
        )

    await database.write(writes)
    with pytest.raises(InvalidInput, match=constraint):
        await database.write(lambda session: session.execute(text(statement)))


async def test_deleting_a_team_deletes_everything_under_it(database: Database, job: NewJob):
    def writes(session: Session) -> Any:
        pipeline = session.get_one(Pipeline, job.pipeline_id)
        user = UserRepository(session).create(username="ada", display_name="Ada")
        TeamRepository(session).put_member(pipeline.team_id, user.id, TeamRole.MEMBER)
        ArtifactRepository(session).create(
            job.id, name="log", size_bytes=1, sha256="0" * 64, uri="file:///log"
        )
        secrets = SecretRepository(session)
        for scope in (
            SecretScope.for_team(pipeline.team_id),
            SecretScope.for_pipeline(pipeline.id),
        ):
            secrets.upsert(scope, "TOKEN", secret_id=new_id(), ciphertext=b"\x01c", key_id=b"kid!")
        other = TeamRepository(session).create(name="other team")
        step_id = session.scalars(select(Step.id).where(Step.job_id == job.id)).first()
        session.add(LogChunk(step_id=step_id, offset=0, data=b"output"))
        return pipeline, other

    pipeline, other = await database.write(writes)
    await database.write(
        lambda session: session.execute(delete(Team).where(Team.id == pipeline.team_id))
    )

    def reads(session: Session) -> Any:
        remaining = {
            model.__tablename__: count(session, model)
            for model in (Team, TeamMember, Pipeline, Job, Step, LogChunk, Artifact, Secret, User)
        }
        assert session.get(Team, other.id) is not None
        return (remaining,)

    (remaining,) = await database.read(reads)
    assert remaining == {
        "teams": 1,
        "team_members": 0,
        "pipelines": 0,
        "jobs": 0,
        "steps": 0,
        "log_chunks": 0,
        "artifacts": 0,
        "secrets": 0,
        "users": 1,  # users belong to no team
    }


async def test_deleting_a_job_deletes_its_steps_and_artifacts_only(
    database: Database, pipeline: Pipeline, job: NewJob
):
    def writes(session: Session) -> Any:
        ArtifactRepository(session).create(
            job.id, name="log", size_bytes=1, sha256="0" * 64, uri="file:///log"
        )

    await database.write(writes)
    await database.write(lambda session: session.execute(delete(Job).where(Job.id == job.id)))

    def reads(session: Session) -> Any:
        assert (count(session, Step), count(session, Artifact)) == (0, 0)
        assert session.get(Pipeline, pipeline.id) is not None

    await database.read(reads)


async def test_deleting_a_user_ends_their_memberships(database: Database, team: Team):
    def writes(session: Session) -> Any:
        user = UserRepository(session).create(username="ada", display_name="Ada")
        TeamRepository(session).put_member(team.id, user.id, TeamRole.OWNER)
        return (user,)

    (user,) = await database.write(writes)
    await database.write(lambda session: session.execute(delete(User).where(User.id == user.id)))

    def reads(session: Session) -> Any:
        assert count(session, TeamMember) == 0
        assert session.get(Team, team.id) is not None

    await database.read(reads)


async def test_a_secret_name_is_unique_within_its_scope_only(
    database: Database, pipeline: Pipeline
):
    """The same name may exist once for the team and once for each of its pipelines."""
    now = utcnow()
    row = {
        "name": "TOKEN",
        "ciphertext": b"c",
        "key_id": b"kid!",
        "created_at": now,
        "updated_at": now,
    }

    def writes(session: Session) -> Any:
        session.execute(insert(Secret).values(id=new_id(), team_id=pipeline.team_id, **row))
        session.execute(insert(Secret).values(id=new_id(), pipeline_id=pipeline.id, **row))

    await database.write(writes)
    assert await database.read(lambda session: count(session, Secret) == 2)


@sqlite_only("SQLite's EXPLAIN QUERY PLAN")
@pytest.mark.parametrize(
    ("query", "columns"),
    [
        (
            "SELECT * FROM jobs WHERE pipeline_id = 'p' ORDER BY number DESC LIMIT 20",
            ["pipeline_id", "number"],
        ),
        (
            "SELECT * FROM jobs WHERE status = 'pending' ORDER BY created_at, id LIMIT 1",
            ["status", "created_at", "id"],
        ),
        (
            "SELECT * FROM jobs WHERE status = 'running' AND last_seen_at < '2026-01-01'",
            ["status", "last_seen_at"],
        ),
        ("SELECT * FROM api_tokens WHERE token_sha256 = x'00'", ["token_sha256"]),
        (
            "SELECT * FROM api_tokens WHERE user_id = 'u' ORDER BY created_at",
            ["user_id", "created_at"],
        ),
        ("SELECT * FROM api_tokens WHERE worker_id = 'w'", ["worker_id"]),
        (
            'SELECT * FROM log_chunks WHERE step_id = \'s\' AND "offset" >= 10 ORDER BY "offset"',
            ["step_id", "offset"],
        ),
        ("SELECT * FROM steps WHERE job_id = 'j' ORDER BY position", ["job_id", "position"]),
        ("SELECT * FROM artifacts WHERE job_id = 'j'", ["job_id", "name"]),
        ("SELECT * FROM pipelines WHERE team_id = 't' ORDER BY name", ["team_id", "name"]),
        ("SELECT * FROM secrets WHERE team_id = 't' ORDER BY name", ["team_id", "name"]),
        ("SELECT * FROM secrets WHERE pipeline_id = 'p' ORDER BY name", ["pipeline_id", "name"]),
        ("SELECT * FROM team_members WHERE user_id = 'u'", ["user_id"]),
    ],
)
async def test_common_queries_are_served_by_an_index_without_sorting(
    database: Database, query: str, columns: list[str]
):
    def reads(session: Session) -> Any:
        plan = " | ".join(
            str(row[-1]) for row in session.execute(text(f"EXPLAIN QUERY PLAN {query}"))
        )
        used = re.search(r"USING (?:COVERING )?INDEX (\w+)", plan)
        assert used is not None, plan
        indexed = [row.name for row in session.execute(text(f"PRAGMA index_info({used[1]})"))]
        return plan, indexed

    plan, indexed = await database.read(reads)
    assert indexed == columns
    assert "TEMP B-TREE" not in plan
