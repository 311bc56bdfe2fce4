"""Jobs, their steps and their artifact records: the units of work the job routes run,
and, for starting and finishing, keyd's cache kept in step (`keyd_sync`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from danube_api.keyd_sync import KeydSync
from danube_shared.db.engine import Database
from danube_shared.db.repositories import ArtifactRepository, JobRepository, NewJob
from danube_shared.db.schema import Artifact, Job, Status, Step


def _create(session: Session, pipeline_id: str) -> NewJob:
    return JobRepository(session).create(pipeline_id)


def _get(session: Session, job_id: str) -> Job:
    return JobRepository(session).get(job_id)


def _list_for_pipeline(session: Session, pipeline_id: str, limit: int, offset: int) -> list[Job]:
    return list(JobRepository(session).list_for_pipeline(pipeline_id, limit=limit, offset=offset))


def _update_step(
    session: Session, job_id: str, position: int, status: Status, exit_code: int | None
) -> Step:
    return JobRepository(session).update_step(job_id, position, status=status, exit_code=exit_code)


def _create_artifact(
    session: Session, job_id: str, *, name: str, size_bytes: int, sha256: str, uri: str
) -> Artifact:
    return ArtifactRepository(session).create(
        job_id, name=name, size_bytes=size_bytes, sha256=sha256, uri=uri
    )


def _list_artifacts(session: Session, job_id: str, limit: int, offset: int) -> list[Artifact]:
    return list(ArtifactRepository(session).list_for_job(job_id, limit=limit, offset=offset))


class JobService:
    """Jobs, built with the database and the keeper of keyd's cache."""

    def __init__(self, database: Database, keyd_sync: KeydSync) -> None:
        self._database = database
        self._keyd_sync = keyd_sync

    async def create(self, pipeline_id: str) -> NewJob:
        """A new pending job of the pipeline, with its steps; `NotFound` if no pipeline."""
        return await self._database.write(_create, pipeline_id)

    async def get(self, job_id: str) -> Job:
        return await self._database.read(_get, job_id)

    async def list_for_pipeline(self, pipeline_id: str, *, limit: int, offset: int) -> list[Job]:
        return await self._database.read(_list_for_pipeline, pipeline_id, limit, offset)

    async def start(self, job_id: str) -> tuple[Job, str]:
        """Start a pending job with its secrets in keyd; the job and its token."""
        return await self._keyd_sync.start_job(job_id)

    async def finish(self, job_id: str, status: Status) -> Job:
        """Finish a job and drop its secrets from keyd."""
        return await self._keyd_sync.finish_job(job_id, status)

    async def update_step(
        self, job_id: str, position: int, *, status: Status, exit_code: int | None
    ) -> Step:
        return await self._database.write(_update_step, job_id, position, status, exit_code)

    async def create_artifact(
        self, job_id: str, *, name: str, size_bytes: int, sha256: str, uri: str
    ) -> Artifact:
        return await self._database.write(
            _create_artifact, job_id, name=name, size_bytes=size_bytes, sha256=sha256, uri=uri
        )

    async def list_artifacts(self, job_id: str, *, limit: int, offset: int) -> Sequence[Artifact]:
        return await self._database.read(_list_artifacts, job_id, limit, offset)
