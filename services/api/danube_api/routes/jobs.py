"""Jobs (runs of a pipeline), their steps and their artifact records."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from danube_api.deps import JobServiceDep, PageDep
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
async def create_job(pipeline_id: str, jobs: JobServiceDep) -> JobPublic:
    return JobPublic.model_validate(await jobs.create(pipeline_id))


@router.get(
    "/pipelines/{pipeline_id}/jobs",
    summary="List a pipeline's jobs, newest first",
    responses=problem_responses(404, 422, 503),
)
async def list_jobs(pipeline_id: str, jobs: JobServiceDep, page: PageDep) -> Page[JobPublic]:
    found = await jobs.list_for_pipeline(pipeline_id, limit=page.limit + 1, offset=page.offset)
    rows = [JobPublic.model_validate(job) for job in found]
    return Page[JobPublic].of(rows, limit=page.limit, offset=page.offset)


@router.get(
    "/jobs/{job_id}",
    summary="Get a job and its steps",
    responses=problem_responses(404, 422, 503),
)
async def get_job(job_id: str, jobs: JobServiceDep) -> JobPublic:
    return JobPublic.model_validate(await jobs.get(job_id))


@router.post(
    "/jobs/{job_id}/start",
    summary="Start a pending job: load its secrets into keyd and return its token, once",
    response_description="The running job, with the token a worker presents to keyd. "
    "No other response ever shows the token.",
    responses=problem_responses(404, 409, 422, 502, 503),
)
async def start_job(job_id: str, jobs: JobServiceDep) -> JobStarted:
    job, token = await jobs.start(job_id)
    return JobStarted(**dict(JobPublic.model_validate(job)), token=token)


@router.post(
    "/jobs/{job_id}/finish",
    summary="Finish a job (running, or pending to cancelled) and drop its secrets from keyd",
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def finish_job(job_id: str, body: JobFinish, jobs: JobServiceDep) -> JobPublic:
    job = await jobs.finish(job_id, Status(body.status))
    return JobPublic.model_validate(job)


@router.patch(
    "/jobs/{job_id}/steps/{position}",
    summary="Record a step's status (and exit code, with a final status) while its job runs",
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def update_step(
    job_id: str, position: PositionPath, body: StepUpdate, jobs: JobServiceDep
) -> StepPublic:
    step = await jobs.update_step(
        job_id, position, status=Status(body.status), exit_code=body.exit_code
    )
    return StepPublic.model_validate(step)


@router.post(
    "/jobs/{job_id}/artifacts",
    status_code=status.HTTP_201_CREATED,
    summary="Record an artifact of a job",
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def create_artifact(job_id: str, body: ArtifactCreate, jobs: JobServiceDep) -> ArtifactPublic:
    artifact = await jobs.create_artifact(
        job_id, name=body.name, size_bytes=body.size_bytes, sha256=body.sha256, uri=body.uri
    )
    return ArtifactPublic.model_validate(artifact)


@router.get(
    "/jobs/{job_id}/artifacts",
    summary="List a job's artifact records, oldest first",
    responses=problem_responses(404, 422, 503),
)
async def list_artifacts(job_id: str, jobs: JobServiceDep, page: PageDep) -> Page[ArtifactPublic]:
    artifacts = await jobs.list_artifacts(job_id, limit=page.limit + 1, offset=page.offset)
    rows = [ArtifactPublic.model_validate(artifact) for artifact in artifacts]
    return Page[ArtifactPublic].of(rows, limit=page.limit, offset=page.offset)
