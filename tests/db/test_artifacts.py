"""ArtifactRepository."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import ArtifactRepository, NewJob
from danube_shared.errors import Conflict, InvalidInput, NotFound

DIGEST = hashlib.sha256(b"artifact").hexdigest()


async def test_a_jobs_artifacts_are_listed_oldest_first(database: Database, job: NewJob):
    def writes(session: Session) -> Any:
        artifacts = ArtifactRepository(session)
        artifacts.create(job.id, name="report.xml", size_bytes=10, sha256=DIGEST, uri="s3://b/r")
        artifacts.create(
            job.id, name="app.tar.gz", size_bytes=2**40, sha256=DIGEST.upper(), uri="s3://b/a"
        )

    await database.write(writes)
    listed = await database.read(lambda session: ArtifactRepository(session).list_for_job(job.id))
    assert [(a.name, a.size_bytes, a.sha256) for a in listed] == [
        ("report.xml", 10, DIGEST),
        ("app.tar.gz", 2**40, DIGEST),  # big sizes fit; digests are stored lowercase
    ]


async def test_an_artifact_name_is_unique_within_its_job(database: Database, job: NewJob):
    def writes(session: Session) -> Any:
        ArtifactRepository(session).create(
            job.id, name="log", size_bytes=1, sha256=DIGEST, uri="file:///1"
        )

    await database.write(writes)

    def writes_again(session: Session) -> Any:
        ArtifactRepository(session).create(
            job.id, name="log", size_bytes=1, sha256=DIGEST, uri="file:///2"
        )

    with pytest.raises(Conflict, match="already has an artifact named 'log'"):
        await database.write(writes_again)


@pytest.mark.parametrize(
    ("size_bytes", "sha256"),
    [(-1, DIGEST), (1, "not-a-digest"), (1, DIGEST[:-1])],
)
async def test_a_negative_size_or_a_malformed_digest_is_invalid_input(
    database: Database, job: NewJob, size_bytes: int, sha256: str
):
    def writes(session: Session) -> Any:
        ArtifactRepository(session).create(
            job.id, name="log", size_bytes=size_bytes, sha256=sha256, uri="file:///1"
        )

    with pytest.raises(InvalidInput):
        await database.write(writes)


async def test_artifacts_of_an_unknown_job_are_not_found(database: Database):
    def writes(session: Session) -> Any:
        ArtifactRepository(session).create(
            new_id(), name="log", size_bytes=1, sha256=DIGEST, uri="file:///1"
        )

    with pytest.raises(NotFound, match="job"):
        await database.write(writes)
    with pytest.raises(NotFound, match="job"):
        await database.read(lambda session: ArtifactRepository(session).list_for_job(new_id()))


async def test_a_jobs_artifacts_are_listed_in_pages(database: Database, job: NewJob):
    def writes(session: Session) -> Any:
        artifacts = ArtifactRepository(session)
        for name in ("one", "two", "three"):
            artifacts.create(job.id, name=name, size_bytes=1, sha256=DIGEST, uri="s3://b")

    await database.write(writes)

    def reads(session: Session) -> Any:
        artifacts = ArtifactRepository(session)
        pages = [
            [a.name for a in artifacts.list_for_job(job.id, limit=2, offset=offset)]
            for offset in (0, 2)
        ]
        return (pages,)

    (pages,) = await database.read(reads)
    assert pages == [["one", "two"], ["three"]]
