"""The bounds of one page of a list: every repository's `list_*` checks its page here."""

from __future__ import annotations

from danube_shared.errors import InvalidInput

MAX_PAGE_SIZE = 500


def check_page(limit: int, offset: int) -> None:
    """Refuse a page that is empty by construction or larger than `MAX_PAGE_SIZE`."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE_SIZE}, not {limit}")
    if offset < 0:
        raise InvalidInput(f"offset must not be negative, not {offset}")
