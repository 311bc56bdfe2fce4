"""Jobs (runs of a pipeline), their steps and their artifact records."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from danube_api import job_lifecycle
from danube_api.deps import AppStateDep, DatabaseDep, PageDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import (
    ArtifactCreate,
    ArtifactPublic,
    JobFinish,
    JobPublic,
    JobStarted,
    Page,
    StepPublic,
    StepUpdate,
)
from danube_shared.db.repositories import ArtifactRepository, JobRepository
from danube_shared.db.schema import Status

router = APIRouter(prefix=API_PREFIX, tags=["jobs"])

PositionPath = Annotated[
    int, Path(ge=0, le=2**31 - 1, description="The step's 0-based index in the pipeline's steps")
]


@router.post(
    "/pipelines/{pipeline_id}/jobs",
    status_code=status.HTTP_201_CREATED,
    summary="Create a pending job of a pipeline, with its steps",
    responses=problem_responses(404, 409, 422, 503),
)
async def create_job(pipeline_id: str, database: DatabaseDep) -> JobPublic:
    async with database.write() as session:
        job = await JobRepository(session).create(pipeline_id)
    return JobPublic.model_validate(job)


@router.get(
    "/pipelines/{pipeline_id}/jobs",
    summary="List a pipeline's jobs, newest first",
    responses=problem_responses(404, 422, 503),
)
async def list_jobs(pipeline_id: str, database: DatabaseDep, page: PageDep) -> Page[JobPublic]:
    async with database.read() as session:
        jobs = await JobRepository(session).list_for_pipeline(
            pipeline_id, limit=page.limit + 1, offset=page.offset
        )
        rows = [JobPublic.model_validate(job) for job in jobs]
    return Page[JobPublic].of(rows, limit=page.limit, offset=page.offset)


@router.get(
    "/jobs/{job_id}",
    summary="Get a job and its steps",
    responses=problem_responses(404, 422, 503),
)
async def get_job(job_id: str, database: DatabaseDep) -> JobPublic:
    async with database.read() as session:
        job = await JobRepository(session).get(job_id)
    return JobPublic.model_validate(job)


@router.post(
    "/jobs/{job_id}/start",
    summary="Start a pending job: load its secrets into keyd and return its token, once",
    response_description="The running job, with the token a worker presents to keyd. "
    "No other response ever shows the token.",
    responses=problem_responses(404, 409, 422, 502, 503),
)
async def start_job(job_id: str, state: AppStateDep) -> JobStarted:
    job, token = await job_lifecycle.start_job(state, job_id)
    return JobStarted(**dict(JobPublic.model_validate(job)), token=token)


@router.post(
    "/jobs/{job_id}/finish",
    summary="Finish a job (running, or pending to cancelled) and drop its secrets from keyd",
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def finish_job(job_id: str, body: JobFinish, state: AppStateDep) -> JobPublic:
    job = await job_lifecycle.finish_job(state, job_id, Status(body.status))
    return JobPublic.model_validate(job)


@router.patch(
    "/jobs/{job_id}/steps/{position}",
    summary="Record a step's status (and exit code, with a final status) while its job runs",
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def update_step(
    job_id: str, position: PositionPath, body: StepUpdate, database: DatabaseDep
) -> StepPublic:
    async with database.write() as session:
        step = await JobRepository(session).update_step(
            job_id, position, status=Status(body.status), exit_code=body.exit_code
        )
    return StepPublic.model_validate(step)


@router.post(
    "/jobs/{job_id}/artifacts",
    status_code=status.HTTP_201_CREATED,
    summary="Record an artifact of a job",
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def create_artifact(
    job_id: str, body: ArtifactCreate, database: DatabaseDep
) -> ArtifactPublic:
    async with database.write() as session:
        artifact = await ArtifactRepository(session).create(
            job_id, name=body.name, size_bytes=body.size_bytes, sha256=body.sha256, uri=body.uri
        )
    return ArtifactPublic.model_validate(artifact)


@router.get(
    "/jobs/{job_id}/artifacts",
    summary="List a job's artifact records, oldest first",
    responses=problem_responses(404, 422, 503),
)
async def list_artifacts(job_id: str, database: DatabaseDep, page: PageDep) -> Page[ArtifactPublic]:
    async with database.read() as session:
        artifacts = await ArtifactRepository(session).list_for_job(
            job_id, limit=page.limit + 1, offset=page.offset
        )
        rows = [ArtifactPublic.model_validate(artifact) for artifact in artifacts]
    return Page[ArtifactPublic].of(rows, limit=page.limit, offset=page.offset)
