"""Flushing a repository's changes, with unique violations turned into `Conflict`."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from danube_shared.db.error_translation import is_unique_violation
from danube_shared.errors import Conflict, InvalidInput

MAX_PAGE_SIZE = 500


async def flush(session: AsyncSession, *, conflict: str) -> None:
    """Send pending changes to the database; a unique violation raises `Conflict(conflict)`.

    Other failures propagate, and the unit of work (`Database.write`) translates them."""
    try:
        await session.flush()
    except sa_exc.IntegrityError as error:
        if is_unique_violation(error):
            raise Conflict(conflict) from error
        raise


def check_page(limit: int, offset: int) -> None:
    """Refuse a page that is empty by construction or larger than `MAX_PAGE_SIZE`."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE_SIZE}, not {limit}")
    if offset < 0:
        raise InvalidInput(f"offset must not be negative, not {offset}")
