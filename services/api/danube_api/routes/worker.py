"""The worker's claim: the one route a worker calls without a job (DESIGN 7)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Query, Request, Response, status

from danube_api.access import AnyWorker
from danube_api.deps import JobServiceDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import JobClaimed, JobPublic

router = APIRouter(prefix=API_PREFIX, tags=["worker"])

MAX_CLAIM_WAIT_S: Final = 60


class HungUp:
    """Whether the claimer hung up, for the claim's long poll: asked before each look for
    a job but the first. The request has only just arrived then, and Starlette's check
    (`Request.is_disconnected`, an anyio cancel scope around `receive`) was a fifth of the
    CPU of a claim that finds a job at once; a claimer that hangs up while it waits is
    still seen before the next look, so no job is claimed for it."""

    __slots__ = ("_asked", "_request")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._asked = False

    async def __call__(self) -> bool:
        if not self._asked:
            self._asked = True
            return False
        return await self._request.is_disconnected()


@router.post(
    "/worker/claim",
    summary="Claim the oldest pending job, waiting up to `wait` seconds for one",
    response_description="The job, now running for this worker with its secrets in this "
    "node's keyd, and its token: the only time the token is shown",
    response_model=JobClaimed,
    responses={
        204: {"description": "No job became pending within `wait` seconds"},
        **problem_responses(401, 403, 422, 503),
    },
)
async def claim(
    request: Request,
    worker: AnyWorker,
    jobs: JobServiceDep,
    wait: Annotated[
        int, Query(ge=0, le=MAX_CLAIM_WAIT_S, description="Seconds to wait for a job (0 to 60)")
    ] = 0,
) -> JobClaimed | Response:
    claimed = await jobs.claim(worker.worker_id, wait_s=wait, gone=HungUp(request))
    if claimed is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return JobClaimed(job=JobPublic.model_validate(claimed.job), token=claimed.token)
