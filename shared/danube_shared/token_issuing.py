"""Issuing API tokens (DESIGN 11): the units of work that make a user's or a worker's
token and store only its hash. The API's routes, `danube up`'s bootstrap and the
`danube user` / `danube token` commands all issue tokens through these, so a token is
made and stored one way everywhere. Each returns the token itself, once, for the caller
to show or write to a file; nothing here logs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from danube_shared.db.repositories import TokenRepository, UserRepository, WorkerRepository
from danube_shared.db.schema import ApiToken, User, Worker
from danube_shared.errors import Conflict, NotFound
from danube_shared.tokens import TokenKind, new_token, token_sha256

ADMIN_USERNAME = "admin"
# The name of a token the CLI issues: a label, not a secret.
CLI_TOKEN_NAME = "cli"  # noqa: S105 -- a label shown in the token list, not a secret


@dataclass(frozen=True, slots=True)
class IssuedUserToken:
    user: User
    record: ApiToken
    token: str


@dataclass(frozen=True, slots=True)
class IssuedWorkerToken:
    worker: Worker
    record: ApiToken
    token: str


def issue_user_token(
    session: Session, user_id: str, name: str, expires_at: datetime | None = None
) -> IssuedUserToken:
    """A new token of an existing user; `NotFound` if there is no such user."""
    user = UserRepository(session).get(user_id)
    token = new_token(TokenKind.USER)
    record = TokenRepository(session).create_for_user(
        user_id, name=name, token_sha256=token_sha256(token), expires_at=expires_at
    )
    return IssuedUserToken(user, record, token)


def create_user_with_token(
    session: Session, username: str, *, is_admin: bool = False, token_name: str = CLI_TOKEN_NAME
) -> IssuedUserToken:
    """A new user and its first token; `Conflict` if the username is taken."""
    user = UserRepository(session).create(
        username=username, display_name=username, is_admin=is_admin
    )
    return issue_user_token(session, user.id, token_name)


def issue_token_for_username(
    session: Session, username: str, token_name: str = CLI_TOKEN_NAME
) -> IssuedUserToken:
    """A new token of the user named `username`; `NotFound` if there is none."""
    user = UserRepository(session).get_by_username(username)
    return issue_user_token(session, user.id, token_name)


def create_worker_with_token(session: Session, name: str) -> IssuedWorkerToken:
    """A new worker and its token; `Conflict` if the name is taken."""
    worker = WorkerRepository(session).create(name=name)
    return _issue_worker_token(session, worker)


def _issue_worker_token(session: Session, worker: Worker) -> IssuedWorkerToken:
    token = new_token(TokenKind.WORKER)
    record = TokenRepository(session).create_for_worker(
        worker.id, name=worker.name, token_sha256=token_sha256(token)
    )
    return IssuedWorkerToken(worker, record, token)


@dataclass(frozen=True, slots=True)
class Bootstrap:
    admin: IssuedUserToken
    worker: IssuedWorkerToken


def bootstrap_access(session: Session, node: str) -> Bootstrap:
    """The first run of a home: the site admin `admin` and the worker named `node`, each
    with a new token. Either may already exist (another node on a shared database, or a
    home whose token files were removed): it then gets a new token, and an `admin` that
    is not a site admin becomes one. A revoked worker of that name stays revoked:
    `Conflict`, which names it."""
    users = UserRepository(session)
    try:
        user = users.get_by_username(ADMIN_USERNAME)
    except NotFound:
        user = users.create(username=ADMIN_USERNAME, display_name="Site admin", is_admin=True)
    if not user.is_admin:
        users.set_admin(user.id, is_admin=True)
    admin = issue_user_token(session, user.id, "danube up")
    workers = WorkerRepository(session)
    worker = workers.find_by_name(node)
    if worker is None:
        worker = workers.create(name=node)
    elif worker.revoked_at is not None:
        raise Conflict(
            f"the worker {node!r} is revoked; set api.node to another name for this node"
        )
    return Bootstrap(admin, _issue_worker_token(session, worker))
