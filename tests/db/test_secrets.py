"""SecretRepository: scoped, write-only secrets bound to their row id."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import (
    JobRepository,
    PipelineRepository,
    ResolvedSecret,
    SecretRepository,
    SecretScope,
)
from danube_shared.db.schema import Job, Pipeline, Secret
from danube_shared.errors import InvalidInput, NotFound
from tests.db.conftest import STEPS

KEY_ID = b"\x01\x02\x03\x04"


async def put(
    database: Database, scope: SecretScope, name: str, ciphertext: bytes
) -> tuple[str, bool]:
    secret_id = new_id()
    async with database.write() as session:
        secret, created = await SecretRepository(session).upsert(
            scope, name, secret_id=secret_id, ciphertext=ciphertext, key_id=KEY_ID
        )
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
    async with database.read() as session:
        rows = (await session.scalars(select(Secret))).all()
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
    async with database.read() as session:
        listed = await SecretRepository(session).list_names(team_scope)
    assert [info.name for info in listed] == ["A_TOKEN", "B_TOKEN"]
    assert not hasattr(listed[0], "ciphertext")


async def test_deleting_a_secret_removes_it_and_a_missing_one_is_not_found(
    database: Database, pipeline: Pipeline
):
    scope = SecretScope.for_pipeline(pipeline.id)
    await put(database, scope, "TOKEN", b"\x01t")
    async with database.write() as session:
        await SecretRepository(session).delete(scope, "TOKEN")
    with pytest.raises(NotFound, match=f"pipeline {pipeline.id} has no secret named 'TOKEN'"):
        async with database.write() as session:
            await SecretRepository(session).delete(scope, "TOKEN")


async def test_a_secret_of_an_unknown_team_or_pipeline_is_not_found(database: Database):
    for scope in (SecretScope.for_team(new_id()), SecretScope.for_pipeline(new_id())):
        with pytest.raises(NotFound):
            await put(database, scope, "TOKEN", b"\x01t")
        with pytest.raises(NotFound):
            async with database.read() as session:
                await SecretRepository(session).list_names(scope)


@pytest.mark.parametrize(("ciphertext", "key_id"), [(b"", KEY_ID), (b"\x01c", b"abc")])
async def test_an_empty_ciphertext_or_a_key_id_not_of_4_bytes_is_invalid_input(
    database: Database, pipeline: Pipeline, ciphertext: bytes, key_id: bytes
):
    with pytest.raises(InvalidInput):
        async with database.write() as session:
            await SecretRepository(session).upsert(
                SecretScope.for_team(pipeline.team_id),
                "TOKEN",
                secret_id=new_id(),
                ciphertext=ciphertext,
                key_id=key_id,
            )


def test_a_scope_is_exactly_one_of_team_and_pipeline():
    with pytest.raises(ValueError, match="exactly one"):
        SecretScope()
    with pytest.raises(ValueError, match="exactly one"):
        SecretScope(team_id=new_id(), pipeline_id=new_id())


async def test_a_job_sees_its_teams_secrets_overridden_by_its_pipelines(
    database: Database, pipeline: Pipeline, job: Job
):
    team_scope = SecretScope.for_team(pipeline.team_id)
    await put(database, team_scope, "SHARED", b"\x01team-shared")
    team_only, _ = await put(database, team_scope, "TEAM_ONLY", b"\x01team-only")
    override, _ = await put(
        database, SecretScope.for_pipeline(pipeline.id), "SHARED", b"\x01pipeline-shared"
    )
    async with database.write() as session:
        sibling = await PipelineRepository(session).create(
            pipeline.team_id, name="sibling", steps=STEPS
        )
    await put(database, SecretScope.for_pipeline(sibling.id), "SIBLING", b"\x01sibling")
    async with database.read() as session:
        resolved = await SecretRepository(session).resolve_for_job(job.id)
    assert resolved == [
        ResolvedSecret(override, "SHARED", b"\x01pipeline-shared"),
        ResolvedSecret(team_only, "TEAM_ONLY", b"\x01team-only"),
    ]


async def test_a_job_without_secrets_resolves_to_none(database: Database, job: Job):
    async with database.read() as session:
        assert await SecretRepository(session).resolve_for_job(job.id) == []


async def test_resolving_the_secrets_of_an_unknown_job_is_not_found(database: Database):
    with pytest.raises(NotFound, match="job"):
        async with database.read() as session:
            await SecretRepository(session).resolve_for_job(new_id())


async def test_secrets_of_a_deleted_pipeline_go_with_it(
    database: Database, pipeline: Pipeline, job: Job
):
    await put(database, SecretScope.for_pipeline(pipeline.id), "TOKEN", b"\x01t")
    async with database.write() as session:
        await session.delete(await PipelineRepository(session).get(pipeline.id))
    async with database.read() as session:
        assert (await session.scalars(select(Secret))).all() == []
        with pytest.raises(NotFound):
            await JobRepository(session).get(job.id)


async def test_listing_names_pages_by_name(database: Database, pipeline: Pipeline):
    scope = SecretScope.for_team(pipeline.team_id)
    for name in ("D", "B", "A", "C"):
        await put(database, scope, name, b"\x01x")
    async with database.read() as session:
        secrets = SecretRepository(session)
        pages = [
            [info.name for info in await secrets.list_names(scope, limit=2, offset=offset)]
            for offset in (0, 2, 4)
        ]
    assert pages == [["A", "B"], ["C", "D"], []]


async def test_a_secret_is_found_by_name_in_its_own_scope_only(
    database: Database, pipeline: Pipeline
):
    team_scope = SecretScope.for_team(pipeline.team_id)
    secret_id, _ = await put(database, team_scope, "TOKEN", b"\x01t")
    async with database.read() as session:
        secrets = SecretRepository(session)
        found = await secrets.get_by_name(team_scope, "TOKEN")
        assert await secrets.get_by_name(team_scope, "OTHER") is None
        assert await secrets.get_by_name(SecretScope.for_pipeline(pipeline.id), "TOKEN") is None
        with pytest.raises(NotFound):
            await secrets.get_by_name(SecretScope.for_team(new_id()), "TOKEN")
    assert found is not None
    assert (found.id, found.name) == (secret_id, "TOKEN")
    assert not hasattr(found, "ciphertext")
