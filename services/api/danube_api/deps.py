"""The dependencies routes declare, as `Annotated` aliases: all of them, in one place.

Every dependency is an `async def`: FastAPI runs a plain `def` dependency in its thread
pool, a round trip to another thread on every request for what is an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Depends, Query, Request

from danube_api.app_state import AppState
from danube_shared.db.engine import Database

# Offsets past this are refused rather than handed to SQLite's 64-bit integers.
MAX_OFFSET: Final = 2**31 - 1
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200


async def get_app_state(request: Request) -> AppState:
    # The lifespan yields {"app_state": ...}; Starlette copies it into every request.
    state: AppState = request.state.app_state
    return state


async def get_database(request: Request) -> Database:
    state: AppState = request.state.app_state
    return state.database


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


AppStateDep = Annotated[AppState, Depends(get_app_state)]
DatabaseDep = Annotated[Database, Depends(get_database)]
PageDep = Annotated[PageParams, Depends(get_page)]
