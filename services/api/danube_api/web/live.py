"""What the job page's script polls while the job runs, with the session cookie (the JSON
API takes bearer tokens only): the job's and steps' statuses, and a step's log from an
offset. Same permission as the page: a member of the job's team (or a site admin).

The log answers at most `MAX_LOG_SLICE` bytes per request, so a log of tens of MB reaches
the page in bounded pieces and the page appends only what is new. `X-Log-Complete` is as
the JSON API's log route says it: the job is final, so the log will not grow.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from danube_api.deps import MAX_OFFSET, DatabaseDep, JobServiceDep
from danube_api.web.signed_in import JobPage
from danube_api.web.views import job_status

MAX_LOG_SLICE: Final = 256 * 1024
_LIVE_HEADERS: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


@router.get("/jobs/{job_id}/status.json")
async def job_status_json(job_id: str, _access: JobPage, database: DatabaseDep) -> Response:
    job = await database.read(job_status, job_id)
    body: dict[str, Any] = {
        "status": job.status,
        "reason": job.reason,
        "final": job.final,
        "cancel_requested": job.cancel_requested,
        "duration": job.duration,
        "steps": [
            {
                "position": step.position,
                "status": step.status,
                "exit_code": step.exit_code,
                "duration": step.duration,
                "log_length": step.log_length,
                "final": step.final,
            }
            for step in job.steps
        ],
    }
    return JSONResponse(body, headers=_LIVE_HEADERS)


@router.get("/jobs/{job_id}/steps/{position}/log")
async def step_log_slice(
    job_id: str,
    position: int,
    _access: JobPage,
    job_service: JobServiceDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    found = await job_service.read_log(job_id, position, offset=offset, max_bytes=MAX_LOG_SLICE)
    return Response(
        found.data,
        media_type="text/plain; charset=utf-8",
        headers={
            **_LIVE_HEADERS,
            "X-Log-Length": str(found.length),
            "X-Log-Complete": "true" if found.complete else "false",
        },
    )
