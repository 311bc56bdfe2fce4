"""The dependencies routes declare, as `Annotated` aliases: all of them, in one place.

The lifespan (`app.create_app`) yields the services it built under the names below;
Starlette copies them into every request's `request.state`.

Every dependency is an `async def`: FastAPI runs a plain `def` dependency in its thread
pool, a round trip to another thread on every request for what is an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Depends, Query, Request

from danube_api.job_service import JobService
from danube_api.secret_service import SecretService
from danube_shared.db.engine import Database
from danube_shared.keyd_control_client import KeydControl

# Offsets past this are refused rather than handed to SQLite's 64-bit integers.
MAX_OFFSET: Final = 2**31 - 1
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200


async def get_database(request: Request) -> Database:
    database: Database = request.state.database
    return database


async def get_keyd(request: Request) -> KeydControl:
    keyd: KeydControl = request.state.keyd
    return keyd


def job_service_of(request: Request) -> JobService:
    """The job service, read from the request's state by the busiest routes themselves
    (see `routes.jobs`); every other route declares `JobServiceDep`."""
    service: JobService = request.state.job_service
    return service


async def get_job_service(request: Request) -> JobService:
    return job_service_of(request)


async def get_secret_service(request: Request) -> SecretService:
    service: SecretService = request.state.secret_service
    return service


class PageParams:
    """`limit` and `offset` of a list request."""

    __slots__ = ("limit", "offset")

    def __init__(self, limit: int = DEFAULT_LIMIT, offset: int = 0) -> None:
        self.limit = limit
        self.offset = offset


async def get_page(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1 to 200)")
    ] = DEFAULT_LIMIT,
    offset: Annotated[
        int,
        Query(ge=0, le=MAX_OFFSET, description="Items to skip: the previous page's `next_offset`"),
    ] = 0,
) -> PageParams:
    return PageParams(limit, offset)


DatabaseDep = Annotated[Database, Depends(get_database)]
KeydDep = Annotated[KeydControl, Depends(get_keyd)]
JobServiceDep = Annotated[JobService, Depends(get_job_service)]
SecretServiceDep = Annotated[SecretService, Depends(get_secret_service)]
PageDep = Annotated[PageParams, Depends(get_page)]
