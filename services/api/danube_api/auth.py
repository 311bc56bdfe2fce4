"""Who is calling: the bearer token of every `/api/v1` request, resolved to its caller
(DESIGN section 11).

A token is `dnb_u_...` (a user's) or `dnb_w_...` (a worker's); a job's token (`dnb_j_...`)
is for keyd's worker socket only and is refused here like an unknown one. The database
keeps only the SHA-256 of a token.

The check stays off the database on the hot path: a resolved caller is kept in memory for
at most `CALLER_TTL_S` (5 s), keyed by the token's hash. DESIGN 11 allows another node's
revocation to take effect within 5 s; this node drops the entry at once when it revokes a
token (`forget_token`), revokes a worker (`forget_worker`), or sees the token's expiry
pass. `last_used_at` is written at most once a minute per token, after the response, by
one background task, never on the request's path.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy.orm import Session

from danube_api.team_roles import TeamRoleCache
from danube_shared.db.engine import Database
from danube_shared.db.repositories.tokens import LAST_USED_RESOLUTION, TokenRepository
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import DanubeError, Unauthenticated
from danube_shared.tokens import TokenKind, kind_of, token_sha256

CALLER_TTL_S: Final = 5.0
# Bounds the cache: a flood of distinct valid tokens cannot grow it without limit.
MAX_CACHED_CALLERS: Final = 10_000
_BEARER: Final = "bearer "


@dataclass(frozen=True, slots=True)
class UserCaller:
    user_id: str
    username: str
    display_name: str
    is_admin: bool
    token_id: str


@dataclass(frozen=True, slots=True)
class WorkerCaller:
    worker_id: str
    name: str
    token_id: str


Caller = UserCaller | WorkerCaller


@dataclass(frozen=True, slots=True)
class _Cached:
    caller: Caller
    expires_at: datetime | None
    until: float  # monotonic


def _resolve(
    session: Session, sha256: bytes, now: datetime
) -> tuple[Caller, datetime | None] | None:
    active = TokenRepository(session).find_active(sha256, now=now)
    if active is None:
        return None
    token = active.token
    if active.user is not None:
        user = active.user
        return (
            UserCaller(
                user_id=user.id,
                username=user.username,
                display_name=user.display_name,
                is_admin=user.is_admin,
                token_id=token.id,
            ),
            token.expires_at,
        )
    assert active.worker is not None  # noqa: S101 -- the schema's one_owner check
    worker = active.worker
    return WorkerCaller(worker_id=worker.id, name=worker.name, token_id=token.id), token.expires_at


def _touch(session: Session, token_ids: list[str], now: datetime) -> None:
    repository = TokenRepository(session)
    for token_id in token_ids:
        repository.touch(token_id, now=now)


class Authenticator:
    """Resolves bearer tokens to callers, with the short cache described above. Built by
    the app's lifespan; `aclose` flushes the pending `last_used_at` writes."""

    def __init__(self, database: Database, *, ttl_s: float = CALLER_TTL_S) -> None:
        self._database = database
        self._ttl_s = ttl_s
        self._cache: dict[bytes, _Cached] = {}
        self._touched: dict[str, float] = {}  # token id -> monotonic time of last write
        self._pending_touch: set[str] = set()
        self._touch_task: asyncio.Task[None] | None = None
        # Team access answers, cached like callers (team_roles.py); held here so that
        # every request's state carries it without another lifespan object.
        self.team_roles = TeamRoleCache(ttl_s=ttl_s)

    async def caller(self, authorization: str | None) -> Caller:
        token = _bearer_token(authorization)
        kind = kind_of(token)
        if kind not in (TokenKind.USER, TokenKind.WORKER):
            raise Unauthenticated(
                "this token is not a user's or a worker's API token; send "
                "Authorization: Bearer dnb_u_... or dnb_w_..."
            )
        sha256 = token_sha256(token)
        monotonic = time.monotonic()
        now = utcnow()
        cached = self._cache.get(sha256)
        if cached is not None:
            if cached.until > monotonic and (cached.expires_at is None or cached.expires_at > now):
                self._note_use(cached.caller.token_id, monotonic)
                return cached.caller
            del self._cache[sha256]
        resolved = await self._database.read(_resolve, sha256, now)
        if resolved is None:
            raise Unauthenticated("the token is unknown, revoked or expired")
        caller, expires_at = resolved
        if len(self._cache) >= MAX_CACHED_CALLERS:
            self._cache.clear()
        self._cache[sha256] = _Cached(caller, expires_at, monotonic + self._ttl_s)
        self._note_use(caller.token_id, monotonic)
        return caller

    def forget_token(self, token_id: str) -> None:
        """Drop a token revoked on this node, so its next request is refused."""
        for sha256, cached in list(self._cache.items()):
            if cached.caller.token_id == token_id:
                del self._cache[sha256]

    def forget_worker(self, worker_id: str) -> None:
        """Drop every token of a worker revoked on this node."""
        for sha256, cached in list(self._cache.items()):
            caller = cached.caller
            if isinstance(caller, WorkerCaller) and caller.worker_id == worker_id:
                del self._cache[sha256]

    def _note_use(self, token_id: str, monotonic: float) -> None:
        last = self._touched.get(token_id)
        if last is not None and monotonic - last < LAST_USED_RESOLUTION.total_seconds():
            return
        self._touched[token_id] = monotonic
        self._pending_touch.add(token_id)
        if self._touch_task is None or self._touch_task.done():
            self._touch_task = asyncio.get_running_loop().create_task(self._flush_touches())

    async def _flush_touches(self) -> None:
        while self._pending_touch:
            token_ids = sorted(self._pending_touch)
            self._pending_touch.clear()
            try:
                await self._database.write(_touch, token_ids, utcnow())
            except DanubeError:
                # last_used_at is informational: a busy or failing database must not
                # fail requests. The next use after a minute tries again.
                for token_id in token_ids:
                    self._touched.pop(token_id, None)
                return

    async def aclose(self) -> None:
        if self._touch_task is not None:
            await self._touch_task


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("this route needs a token: send Authorization: Bearer <token>")
    if authorization[: len(_BEARER)].lower() != _BEARER:
        raise Unauthenticated("the Authorization header is not `Bearer <token>`")
    return authorization[len(_BEARER) :].strip()
