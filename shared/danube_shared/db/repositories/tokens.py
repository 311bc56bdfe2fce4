"""API tokens: a user's or a worker's, stored as the SHA-256 of the token only.

A token is active while it is not revoked, not past its `expires_at`, and its worker (for a
worker's token) is not revoked. Making the token itself is `danube_shared.tokens`' job;
this repository only ever sees its hash.

Like every repository from DESIGN 6 on, this one works on a synchronous `Session`: it runs
inside a unit of work (a plain function the engine runs in one hop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from danube_shared.db.error_translation import is_unique_violation
from danube_shared.db.ids import new_id
from danube_shared.db.schema import SHA256_LENGTH, ApiToken, User, Worker
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Conflict, InvalidInput, NotFound

# `last_used_at` is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class ActiveToken:
    """An active token with whose it is: exactly one of `user` and `worker` is set."""

    token: ApiToken
    user: User | None
    worker: Worker | None


def _is_active(now: datetime) -> ColumnElement[bool]:
    return and_(
        ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
    )


class TokenRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create_for_user(
        self, user_id: str, *, name: str, token_sha256: bytes, expires_at: datetime | None = None
    ) -> ApiToken:
        """A new token of the user; `NotFound` if the user does not exist."""
        if self._session.get(User, user_id) is None:
            raise NotFound(f"user {user_id} not found")
        return self._add(ApiToken(user_id=user_id), name, token_sha256, expires_at)

    def create_for_worker(
        self, worker_id: str, *, name: str, token_sha256: bytes, expires_at: datetime | None = None
    ) -> ApiToken:
        """A new token of the worker; `NotFound` if the worker does not exist, `Conflict`
        if it is revoked."""
        worker = self._session.get(Worker, worker_id)
        if worker is None:
            raise NotFound(f"worker {worker_id} not found")
        if worker.revoked_at is not None:
            raise Conflict(f"worker {worker_id} is revoked; it gets no new token")
        return self._add(ApiToken(worker_id=worker_id), name, token_sha256, expires_at)

    def find_active(self, token_sha256: bytes, *, now: datetime) -> ActiveToken | None:
        """The token with this hash and its user or worker, if it is active at `now`."""
        statement = (
            select(ApiToken, User, Worker)
            .outerjoin(User, ApiToken.user_id == User.id)
            .outerjoin(Worker, ApiToken.worker_id == Worker.id)
            .where(
                ApiToken.token_sha256 == token_sha256,
                _is_active(now),
                Worker.revoked_at.is_(None),
            )
        )
        row = self._session.execute(statement).one_or_none()
        return None if row is None else ActiveToken(token=row[0], user=row[1], worker=row[2])

    def list_for_user(self, user_id: str) -> Sequence[ApiToken]:
        """The user's tokens that are not revoked (expired ones too), oldest first."""
        statement = (
            select(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.created_at, ApiToken.id)
        )
        return self._session.scalars(statement).all()

    def revoke_for_user(self, user_id: str, token_id: str, *, now: datetime) -> ApiToken:
        """Revoke one of the user's tokens. `NotFound` if the user has no such token, or
        has revoked it: another user's token is answered exactly like a missing one."""
        token = self._session.get(ApiToken, token_id)
        if token is None or token.user_id != user_id or token.revoked_at is not None:
            raise NotFound(f"token {token_id} not found")
        token.revoked_at = now
        self._session.flush()
        return token

    def touch(self, token_id: str, *, now: datetime) -> bool:
        """Record that the token was used at `now`, unless it was recorded less than
        `LAST_USED_RESOLUTION` before; returns whether it wrote. One UPDATE that changes
        no row in the common case."""
        statement = (
            update(ApiToken)
            .where(
                ApiToken.id == token_id,
                or_(
                    ApiToken.last_used_at.is_(None),
                    ApiToken.last_used_at <= now - LAST_USED_RESOLUTION,
                ),
            )
            .values(last_used_at=now)
            .returning(ApiToken.id)
            .execution_options(synchronize_session=False)
        )
        return self._session.execute(statement).first() is not None

    def _add(
        self, token: ApiToken, name: str, token_sha256: bytes, expires_at: datetime | None
    ) -> ApiToken:
        if len(token_sha256) != SHA256_LENGTH:
            raise InvalidInput(f"token_sha256 must be {SHA256_LENGTH} bytes")
        token.id = new_id()
        token.name = name
        token.token_sha256 = token_sha256
        token.created_at = utcnow()
        token.expires_at = expires_at
        self._session.add(token)
        try:
            self._session.flush()
        except sa_exc.IntegrityError as error:
            if is_unique_violation(error):
                raise Conflict("a token with this hash already exists") from error
            raise
        return token
