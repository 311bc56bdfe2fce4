"""SecretRepository: scoped, write-only secrets bound to their row id."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import (
    JobRepository,
    NewJob,
    PipelineRepository,
    ResolvedSecret,
    SecretRepository,
    SecretScope,
    secret_context,
)
from danube_shared.db.schema import Pipeline, Secret
from danube_shared.errors import InvalidInput, NotFound
from tests.db.conftest import STEPS

KEY_ID = b"\x01\x02\x03\x04"


async def put(
    database: Database, scope: SecretScope, name: str, ciphertext: bytes
) -> tuple[str, bool]:
    secret_id = new_id()

    def writes(session: Session) -> Any:
        secret, created = SecretRepository(session).upsert(
            scope, name, secret_id=secret_id, ciphertext=ciphertext, key_id=KEY_ID
        )
        return secret, created

    secret, created = await database.write(writes)
    assert secret.id == secret_id
    return secret_id, created


async def test_a_secret_is_created_then_replaced_under_the_id_of_its_new_ciphertext(
    database: Database, pipeline: Pipeline
):
    scope = SecretScope.for_team(pipeline.team_id)
    first_id, created = await put(database, scope, "TOKEN", b"\x01first")
    assert created
    second_id, created = await put(database, scope, "TOKEN", b"\x01second")
    assert not created
    rows = await database.read(lambda session: (session.scalars(select(Secret))).all())
    assert [(row.id, row.ciphertext, row.key_id) for row in rows] == [
        (second_id, b"\x01second", KEY_ID)
    ]
    assert rows[0].updated_at >= rows[0].created_at
    assert first_id != second_id


async def test_listing_shows_names_and_times_of_one_scope_only(
    database: Database, pipeline: Pipeline
):
    team_scope = SecretScope.for_team(pipeline.team_id)
    await put(database, team_scope, "B_TOKEN", b"\x01b")
    await put(database, team_scope, "A_TOKEN", b"\x01a")
    await put(database, SecretScope.for_pipeline(pipeline.id), "PIPELINE_ONLY", b"\x01p")
    listed = await database.read(lambda session: SecretRepository(session).list_names(team_scope))
    assert [info.name for info in listed] == ["A_TOKEN", "B_TOKEN"]
    assert not hasattr(listed[0], "ciphertext")


async def test_deleting_a_secret_removes_it_and_a_missing_one_is_not_found(
    database: Database, pipeline: Pipeline
):
    scope = SecretScope.for_pipeline(pipeline.id)
    await put(database, scope, "TOKEN", b"\x01t")
    await database.write(lambda session: SecretRepository(session).delete(scope, "TOKEN"))
    with pytest.raises(NotFound, match=f"pipeline {pipeline.id} has no secret named 'TOKEN'"):
        await database.write(lambda session: SecretRepository(session).delete(scope, "TOKEN"))


async def test_a_secret_of_an_unknown_team_or_pipeline_is_not_found(database: Database):
    for scope in (SecretScope.for_team(new_id()), SecretScope.for_pipeline(new_id())):
        with pytest.raises(NotFound):
            await put(database, scope, "TOKEN", b"\x01t")
        with pytest.raises(NotFound):
            await database.read(lambda session, s=scope: SecretRepository(session).list_names(s))


@pytest.mark.parametrize(("ciphertext", "key_id"), [(b"", KEY_ID), (b"\x01c", b"abc")])
async def test_an_empty_ciphertext_or_a_key_id_not_of_4_bytes_is_invalid_input(
    database: Database, pipeline: Pipeline, ciphertext: bytes, key_id: bytes
):
    def writes(session: Session) -> Any:
        SecretRepository(session).upsert(
            SecretScope.for_team(pipeline.team_id),
            "TOKEN",
            secret_id=new_id(),
            ciphertext=ciphertext,
            key_id=key_id,
        )

    with pytest.raises(InvalidInput):
        await database.write(writes)


def test_a_scope_is_exactly_one_of_team_and_pipeline():
    with pytest.raises(ValueError, match="exactly one"):
        SecretScope()
    with pytest.raises(ValueError, match="exactly one"):
        SecretScope(team_id=new_id(), pipeline_id=new_id())


async def test_a_job_sees_its_teams_secrets_overridden_by_its_pipelines(
    database: Database, pipeline: Pipeline, job: NewJob
):
    team_scope = SecretScope.for_team(pipeline.team_id)
    await put(database, team_scope, "SHARED", b"\x01team-shared")
    team_only, _ = await put(database, team_scope, "TEAM_ONLY", b"\x01team-only")
    override, _ = await put(
        database, SecretScope.for_pipeline(pipeline.id), "SHARED", b"\x01pipeline-shared"
    )

    def writes(session: Session) -> Any:
        sibling = PipelineRepository(session).create(pipeline.team_id, name="sibling", steps=STEPS)
        return (sibling,)

    (sibling,) = await database.write(writes)
    await put(database, SecretScope.for_pipeline(sibling.id), "SIBLING", b"\x01sibling")
    resolved = await database.read(
        lambda session: SecretRepository(session).resolve_for_job(job.id)
    )
    assert resolved == [
        ResolvedSecret("SHARED", b"\x01pipeline-shared", secret_context(override)),
        ResolvedSecret("TEAM_ONLY", b"\x01team-only", secret_context(team_only)),
    ]


async def test_a_job_without_secrets_resolves_to_none(database: Database, job: NewJob):
    assert await database.read(
        lambda session: SecretRepository(session).resolve_for_job(job.id) == []
    )


async def test_resolving_the_secrets_of_an_unknown_job_is_not_found(database: Database):
    with pytest.raises(NotFound, match="job"):
        await database.read(lambda session: SecretRepository(session).resolve_for_job(new_id()))


async def test_secrets_of_a_deleted_pipeline_go_with_it(
    database: Database, pipeline: Pipeline, job: NewJob
):
    await put(database, SecretScope.for_pipeline(pipeline.id), "TOKEN", b"\x01t")
    await database.write(
        lambda session: session.delete(PipelineRepository(session).get(pipeline.id))
    )

    def reads(session: Session) -> Any:
        assert (session.scalars(select(Secret))).all() == []
        with pytest.raises(NotFound):
            JobRepository(session).get(job.id)

    await database.read(reads)


async def test_listing_names_pages_by_name(database: Database, pipeline: Pipeline):
    scope = SecretScope.for_team(pipeline.team_id)
    for name in ("D", "B", "A", "C"):
        await put(database, scope, name, b"\x01x")

    def reads(session: Session) -> Any:
        secrets = SecretRepository(session)
        pages = [
            [info.name for info in secrets.list_names(scope, limit=2, offset=offset)]
            for offset in (0, 2, 4)
        ]
        return (pages,)

    (pages,) = await database.read(reads)
    assert pages == [["A", "B"], ["C", "D"], []]


async def test_a_secret_is_found_by_name_in_its_own_scope_only(
    database: Database, pipeline: Pipeline
):
    team_scope = SecretScope.for_team(pipeline.team_id)
    secret_id, _ = await put(database, team_scope, "TOKEN", b"\x01t")

    def reads(session: Session) -> Any:
        secrets = SecretRepository(session)
        found = secrets.get_by_name(team_scope, "TOKEN")
        assert secrets.get_by_name(team_scope, "OTHER") is None
        assert secrets.get_by_name(SecretScope.for_pipeline(pipeline.id), "TOKEN") is None
        with pytest.raises(NotFound):
            secrets.get_by_name(SecretScope.for_team(new_id()), "TOKEN")
        return (found,)

    (found,) = await database.read(reads)
    assert found is not None
    assert (found.id, found.name) == (secret_id, "TOKEN")
    assert not hasattr(found, "ciphertext")


async def test_a_pipeline_s_jobs_see_what_its_jobs_resolve_to_and_no_pipeline_sees_none(
    database: Database, pipeline: Pipeline, job: NewJob
):
    await put(database, SecretScope.for_team(pipeline.team_id), "TEAM", b"\x01team")
    await put(database, SecretScope.for_pipeline(pipeline.id), "OWN", b"\x01own")

    def both(session: Session) -> Any:
        secrets = SecretRepository(session)
        return (
            secrets.resolve_for_pipeline(pipeline.id),
            secrets.resolve_for_job(job.id),
            secrets.resolve_for_pipeline(new_id()),
        )

    by_pipeline, by_job, unknown = await database.read(both)
    assert [secret.name for secret in by_pipeline] == ["OWN", "TEAM"]
    assert by_pipeline == by_job
    assert unknown == []
