"""Jobs (runs of a pipeline), their steps, logs and artifact records.

A member of the job's team creates, reads and cancels jobs and reads logs; the worker that
claimed a job (`routes.worker`) reports on it here: heartbeat, steps, log appends,
artifacts and finish. Each of the worker's calls renews the job's lease.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import Field

from danube_api.access import JobMember, JobWorker, JobWorkerInWrite, PipelineMember
from danube_api.deps import JobServiceDep, PageDep, job_service_of
from danube_api.job_service import JobService
from danube_api.problems import Problem, ProblemResponse, problem, problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import (
    ArtifactCreate,
    ArtifactPublic,
    Heartbeat,
    JobFinish,
    JobPublic,
    LogAppended,
    Page,
    StepPublic,
    StepUpdate,
)
from danube_shared.db.repositories.logs import LogGap, LogTooLarge
from danube_shared.db.schema import Status

router = APIRouter(prefix=API_PREFIX, tags=["jobs"])
JSON_MEDIA_TYPE: Final = "application/json"

# One append's body (DESIGN 7), and one read's answer: a follower asks again from the
# returned length.
MAX_LOG_APPEND_BYTES: Final = 1024 * 1024
MAX_LOG_READ_BYTES: Final = 1024 * 1024
MAX_LOG_OFFSET: Final = 2**53

PositionPath = Annotated[
    int, Path(ge=0, le=2**31 - 1, description="The step's 0-based index in the pipeline's steps")
]
OffsetQuery = Annotated[
    int, Query(ge=0, le=MAX_LOG_OFFSET, description="Byte offset in the step's log")
]


class LogGapProblem(Problem):
    """An append's 409: `length`, where the next append starts, when it came past the
    stored end; none when the job has ended, as no append is taken any more."""

    length: int | None = Field(
        default=None, description="The stored length; absent when the job has ended"
    )


_LOG_GAP_RESPONSE: Final[dict[str, Any]] = {
    "model": LogGapProblem,
    "description": "The job ended (appends are refused), or the append starts past the "
    "stored end of the log: `length` (also in `detail`) is the offset to append at",
}


# The two busiest routes come first: a request is matched against this router's routes in
# order (twice, by FastAPI), one regular expression each. Both take their service from
# the request's state rather than as a dependency: each dependency FastAPI solves is a
# level of its own, a measurable share of these routes' time.


@router.post(
    "/pipelines/{pipeline_id}/jobs",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    summary="Create a pending job of a pipeline, with its steps",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def create_job(pipeline_id: str, _grant: PipelineMember, request: Request) -> Response:
    return await create_answer(job_service_of(request), pipeline_id)


async def create_answer(jobs: JobService, pipeline_id: str) -> Response:
    """The creation's answer once the caller's grant is checked: this route's, and the
    worker lane's (`worker_lane`), which must answer exactly as this route does."""
    job = await jobs.create(pipeline_id)
    # Serialised here, once: returned as a model, FastAPI would validate it against
    # `response_model` a second time before serialising it.
    return Response(
        JobPublic.model_validate(job).model_dump_json(),
        status_code=status.HTTP_201_CREATED,
        media_type=JSON_MEDIA_TYPE,
    )


@router.post(
    "/jobs/{job_id}/steps/{position}/log",
    summary="Append output to a step's log at a byte offset",
    response_model=LogAppended,
    description="The body is the raw (masked) output, at most 1 MiB. `offset` must be the "
    "stored length: bytes before it are taken as a retry and not stored again (200), an "
    "offset past it is a 409 whose `length` says where to append.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
    responses={
        409: _LOG_GAP_RESPONSE,
        **problem_responses(401, 403, 404, 413, 422, 503),
    },
)
async def append_log(
    job_id: str,
    position: PositionPath,
    offset: Annotated[int, Query(ge=0, le=MAX_LOG_OFFSET, description="Where the body starts")],
    request: Request,
    worker: JobWorkerInWrite,
) -> Response:
    data = await request.body()
    return await append_answer(
        job_service_of(request), job_id, worker.worker_id, position, offset=offset, data=data
    )


async def append_answer(
    jobs: JobService, job_id: str, worker_id: str, position: int, *, offset: int, data: bytes
) -> Response:
    """The append's answer once the caller is known to be a worker: this route's, and
    the worker lane's (`worker_lane`), which must answer exactly as this route does."""
    if len(data) > MAX_LOG_APPEND_BYTES:
        return ProblemResponse(
            problem(
                413,
                "content_too_large",
                "Content too large",
                f"one append takes at most {MAX_LOG_APPEND_BYTES} bytes",
            )
        )
    try:
        appended = await jobs.append_log(job_id, worker_id, position, offset=offset, data=data)
    except LogGap as gap:
        found = problem(409, gap.code, "Conflict", gap.message)
        return ProblemResponse(LogGapProblem(**found.model_dump(), length=gap.length))
    except LogTooLarge as too_large:
        return ProblemResponse(problem(413, too_large.code, "Content too large", too_large.message))
    return Response(
        log_appended_json(appended.length, cancel_requested=appended.cancel_requested),
        media_type=JSON_MEDIA_TYPE,
    )


def log_appended_json(length: int, *, cancel_requested: bool) -> bytes:
    """`LogAppended` as pydantic serialises it, written out: the append is the busiest
    route, and a model built only to be serialised cost more than the rest of its reply."""
    return b'{"length":%d,"cancel_requested":%s}' % (
        length,
        b"true" if cancel_requested else b"false",
    )


@router.get(
    "/pipelines/{pipeline_id}/jobs",
    summary="List a pipeline's jobs, newest first",
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def list_jobs(
    pipeline_id: str, _grant: PipelineMember, jobs: JobServiceDep, page: PageDep
) -> Page[JobPublic]:
    found = await jobs.list_for_pipeline(pipeline_id, limit=page.limit + 1, offset=page.offset)
    rows = [JobPublic.model_validate(job) for job in found]
    return Page[JobPublic].of(rows, limit=page.limit, offset=page.offset)


@router.get(
    "/jobs/{job_id}",
    summary="Get a job and its steps",
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def get_job(job_id: str, _grant: JobMember, jobs: JobServiceDep) -> JobPublic:
    return JobPublic.model_validate(await jobs.get(job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a job: a pending one at once, a running one by asking its worker",
    response_description="The job: `cancelled` if it was pending, else running with "
    "`cancel_requested` (its worker stops it and finishes it `cancelled`)",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def cancel_job(job_id: str, _grant: JobMember, jobs: JobServiceDep) -> JobPublic:
    return JobPublic.model_validate(await jobs.cancel(job_id))


@router.get(
    "/jobs/{job_id}/steps/{position}/log",
    summary="Read a step's (masked) output from a byte offset",
    response_class=Response,
    responses={
        200: {
            "description": "At most 1 MiB of the log from `offset` (empty at or past the end)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "headers": {
                "X-Log-Length": {
                    "description": "Bytes of the log stored: follow from here",
                    "schema": {"type": "integer"},
                },
                "X-Log-Complete": {
                    "description": "`true` once the step is final, else `false`",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                },
            },
        },
        **problem_responses(401, 403, 404, 422, 503),
    },
)
async def read_log(
    job_id: str,
    position: PositionPath,
    _grant: JobMember,
    jobs: JobServiceDep,
    offset: OffsetQuery = 0,
) -> Response:
    found = await jobs.read_log(job_id, position, offset=offset, max_bytes=MAX_LOG_READ_BYTES)
    return Response(
        content=found.data,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Log-Length": str(found.length),
            "X-Log-Complete": "true" if found.complete else "false",
        },
    )


@router.get(
    "/jobs/{job_id}/artifacts",
    summary="List a job's artifact records, oldest first",
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def list_artifacts(
    job_id: str, _grant: JobMember, jobs: JobServiceDep, page: PageDep
) -> Page[ArtifactPublic]:
    artifacts = await jobs.list_artifacts(job_id, limit=page.limit + 1, offset=page.offset)
    rows = [ArtifactPublic.model_validate(artifact) for artifact in artifacts]
    return Page[ArtifactPublic].of(rows, limit=page.limit, offset=page.offset)


# The job's worker


@router.post(
    "/jobs/{job_id}/heartbeat",
    summary="Renew the job's lease; says whether cancel was requested",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def heartbeat(job_id: str, worker: JobWorkerInWrite, jobs: JobServiceDep) -> Heartbeat:
    return Heartbeat(cancel_requested=await jobs.heartbeat(job_id, worker.worker_id))


@router.patch(
    "/jobs/{job_id}/steps/{position}",
    summary="Record a step's status (and exit code, with a final status) while its job runs",
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def update_step(
    job_id: str,
    position: PositionPath,
    body: StepUpdate,
    worker: JobWorkerInWrite,
    jobs: JobServiceDep,
) -> StepPublic:
    exit_code = getattr(body, "exit_code", None)
    step = await jobs.update_step(
        job_id, worker.worker_id, position, status=Status(body.status), exit_code=exit_code
    )
    return StepPublic.model_validate(step)


@router.post(
    "/jobs/{job_id}/artifacts",
    status_code=status.HTTP_201_CREATED,
    summary="Record an artifact of a job",
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def create_artifact(
    job_id: str, body: ArtifactCreate, worker: JobWorker, jobs: JobServiceDep
) -> ArtifactPublic:
    artifact = await jobs.create_artifact(
        job_id,
        worker.worker_id,
        name=body.name,
        size_bytes=body.size_bytes,
        sha256=body.sha256,
        uri=body.uri,
    )
    return ArtifactPublic.model_validate(artifact)


@router.post(
    "/jobs/{job_id}/finish",
    summary="Finish the job: steps not yet final become skipped, its secrets leave keyd",
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def finish_job(
    job_id: str, body: JobFinish, worker: JobWorkerInWrite, jobs: JobServiceDep
) -> JobPublic:
    job = await jobs.finish(job_id, worker.worker_id, Status(body.status), body.reason)
    return JobPublic.model_validate(job)
