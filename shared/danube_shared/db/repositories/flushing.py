"""Flushing a repository's changes, with a violated constraint turned into the domain
error it means: a unique violation is a `Conflict`, a foreign-key violation (the row
referred to does not exist) a `NotFound`."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from danube_shared.db.error_translation import is_foreign_key_violation, is_unique_violation
from danube_shared.errors import Conflict, NotFound


def flush(session: Session, *, conflict: str, missing: str | None = None) -> None:
    """Send pending changes to the database; a unique violation raises `Conflict(conflict)`,
    a foreign-key violation `NotFound(missing)` when `missing` is given.

    Other failures propagate, and the unit of work (`Database.write`) translates them."""
    try:
        session.flush()
    except sa_exc.IntegrityError as error:
        if is_unique_violation(error):
            raise Conflict(conflict) from error
        if missing is not None and is_foreign_key_violation(error):
            raise NotFound(missing) from error
        raise
