"""Access from the host: the bootstrap `danube up` runs on a home's first run, and the
`danube user create` / `danube token create` commands (DESIGN 3, 11).

They write the database directly, through a unit of work, once the schema is at head;
a token is printed once (the commands) or written to a 0600 file (the bootstrap), never
logged.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from sqlalchemy.orm import Session

from danube_shared.config import Settings
from danube_shared.db.engine import Database
from danube_shared.db.schema_head import ensure_at_head
from danube_shared.errors import Conflict, DanubeError, NotFound
from danube_shared.program import EXIT_FAILURE, EXIT_OK
from danube_shared.token_issuing import (
    Bootstrap,
    IssuedUserToken,
    bootstrap_access,
    create_user_with_token,
    issue_token_for_username,
)

ADMIN_TOKEN_FILE: Final = "admin.token"  # noqa: S105 -- a file name, not a secret
WORKER_TOKEN_FILE: Final = "worker.token"  # noqa: S105 -- a file name, not a secret
T = TypeVar("T")


async def _write(settings: Settings, unit: Callable[..., T], *args: object) -> T:
    database = Database.open(settings.database)
    try:
        await ensure_at_head(database.engine)
        return await database.write(unit, *args)
    finally:
        await database.dispose()


def write_secret_file(path: Path, text: str) -> None:
    """`text` in a new 0600 file at `path`, replacing any file there atomically."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text + "\n")
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)


def bootstrap_home(home: Path, settings: Settings) -> Path:
    """On a home's first run (no `admin.token` yet): the site admin `admin` and the
    worker named `api.node`, their tokens in `DIR/admin.token` and `DIR/worker.token`.
    Returns the admin token file's path."""
    admin_file = home / ADMIN_TOKEN_FILE
    worker_file = home / WORKER_TOKEN_FILE
    if admin_file.exists() and worker_file.exists():
        return admin_file
    made: Bootstrap = asyncio.run(_write(settings, bootstrap_access, settings.api.node))
    write_secret_file(worker_file, made.worker.token)
    write_secret_file(admin_file, made.admin.token)
    return admin_file


def _fail(message: str) -> int:
    print(f"danube: {message}", file=sys.stderr)  # noqa: T201 -- a CLI reports on stderr
    return EXIT_FAILURE


def _issue(settings: Settings, unit: Callable[[Session], IssuedUserToken]) -> int:
    try:
        issued = asyncio.run(_write(settings, unit))
    except (Conflict, NotFound) as exc:
        return _fail(exc.message)
    except DanubeError as exc:
        return _fail(exc.message)
    print(issued.token)  # noqa: T201 -- the one line the command exists for: the token, once
    return EXIT_OK


def run_user_create(settings: Settings, username: str, *, is_admin: bool) -> int:
    """`danube user create NAME [--admin]`: exit 1 if the user exists."""
    return _issue(
        settings, lambda session: create_user_with_token(session, username, is_admin=is_admin)
    )


def run_token_create(settings: Settings, username: str) -> int:
    """`danube token create USER`: exit 1 if there is no such user."""
    return _issue(settings, lambda session: issue_token_for_username(session, username))
