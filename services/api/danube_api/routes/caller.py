"""The caller itself (`GET /user`) and a user's own API tokens: create (the token shown
once), list, revoke. A revocation takes effect on this node's next request at once
(`Authenticator.forget_token`) and on other nodes within the cache's 5 s."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session

from danube_api.access import AnyCaller, AnyUser
from danube_api.auth import Authenticator, UserCaller
from danube_api.deps import DatabaseDep
from danube_api.identity_schemas import (
    CallerUser,
    CallerWorker,
    TokenCreate,
    TokenCreated,
    TokenPublic,
)
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_shared.db.repositories import TokenRepository
from danube_shared.db.schema import ApiToken
from danube_shared.db.timestamps import utcnow
from danube_shared.token_issuing import IssuedUserToken, issue_user_token

router = APIRouter(prefix=API_PREFIX, tags=["caller"])


def _list(session: Session, user_id: str) -> list[TokenPublic]:
    tokens: Sequence[ApiToken] = TokenRepository(session).list_for_user(user_id)
    return [TokenPublic.model_validate(token) for token in tokens]


def _revoke(session: Session, user_id: str, token_id: str) -> None:
    TokenRepository(session).revoke_for_user(user_id, token_id, now=utcnow())


@router.get("/user", summary="Who the caller is: a user or a worker")
async def get_caller(caller: AnyCaller) -> CallerUser | CallerWorker:
    if isinstance(caller, UserCaller):
        return CallerUser(
            id=caller.user_id,
            username=caller.username,
            display_name=caller.display_name,
            is_admin=caller.is_admin,
        )
    return CallerWorker(id=caller.worker_id, name=caller.name)


@router.post(
    "/user/tokens",
    status_code=status.HTTP_201_CREATED,
    summary="Create an API token of the caller (the token is shown only in this answer)",
    responses=problem_responses(413, 422, 503),
)
async def create_token(body: TokenCreate, caller: AnyUser, database: DatabaseDep) -> TokenCreated:
    expires_at = None
    if body.expires_in_days is not None:
        expires_at = utcnow() + timedelta(days=body.expires_in_days)
    issued: IssuedUserToken = await database.write(
        issue_user_token, caller.user_id, body.name, expires_at
    )
    record = TokenPublic.model_validate(issued.record)
    return TokenCreated(**record.model_dump(), token=issued.token)


@router.get(
    "/user/tokens",
    summary="List the caller's API tokens that are not revoked, oldest first",
    responses=problem_responses(503),
)
async def list_tokens(caller: AnyUser, database: DatabaseDep) -> list[TokenPublic]:
    return await database.read(_list, caller.user_id)


@router.delete(
    "/user/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke one of the caller's API tokens",
    responses=problem_responses(404, 422, 503),
)
async def revoke_token(
    token_id: str, caller: AnyUser, database: DatabaseDep, request: Request
) -> Response:
    await database.write(_revoke, caller.user_id, token_id)
    authenticator: Authenticator = request.state.authenticator
    authenticator.forget_token(token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
