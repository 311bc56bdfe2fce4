"""Artifact records of a job: name, size, SHA-256 and where the file is."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.ids import new_id
from danube_shared.db.paging import check_page
from danube_shared.db.repositories.flushing import flush
from danube_shared.db.repositories.jobs import JobRepository
from danube_shared.db.schema import Artifact
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import InvalidInput

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(self, job_id: str, *, name: str, size_bytes: int, sha256: str, uri: str) -> Artifact:
        """A new artifact record of the job; `NotFound` if the job does not exist, `Conflict`
        if it already has an artifact of that name. `sha256` is hex (stored lowercase)."""
        digest = sha256.lower()
        if not _SHA256_HEX.fullmatch(digest):
            raise InvalidInput("sha256 must be 64 hexadecimal digits")
        if size_bytes < 0:
            raise InvalidInput(f"size_bytes must not be negative, not {size_bytes}")
        artifact = Artifact(
            id=new_id(),
            job_id=job_id,
            name=name,
            size_bytes=size_bytes,
            sha256=digest,
            uri=uri,
            created_at=utcnow(),
        )
        self._session.add(artifact)
        flush(
            self._session,
            conflict=f"job {job_id} already has an artifact named {name!r}",
            missing=f"job {job_id} not found",
        )
        return artifact

    def list_for_job(self, job_id: str, *, limit: int = 50, offset: int = 0) -> Sequence[Artifact]:
        """One page of the job's artifacts, oldest first; `NotFound` if the job does not
        exist."""
        check_page(limit, offset)
        JobRepository(self._session).get(job_id)
        statement = (
            select(Artifact)
            .where(Artifact.job_id == job_id)
            .order_by(Artifact.created_at, Artifact.id)
            .limit(limit)
            .offset(offset)
        )
        return (self._session.scalars(statement)).all()
