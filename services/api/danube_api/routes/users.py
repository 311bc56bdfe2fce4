"""Users: a site admin creates and reads them; any user finds one by name (to add it to
a team)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy.orm import Session

from danube_api.access import Admin, AnyUser
from danube_api.deps import DatabaseDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import NAME_PATTERN, UserCreate, UserPublic
from danube_shared.db.repositories import UserRepository
from danube_shared.db.schema import User

router = APIRouter(prefix=API_PREFIX, tags=["users"])


def _create(session: Session, username: str, display_name: str) -> User:
    return UserRepository(session).create(username=username, display_name=display_name)


def _get(session: Session, user_id: str) -> User:
    return UserRepository(session).get(user_id)


def _by_name(session: Session, username: str) -> User:
    return UserRepository(session).get_by_username(username)


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    summary="Create a user",
    responses=problem_responses(409, 413, 422, 503),
)
async def create_user(body: UserCreate, _admin: Admin, database: DatabaseDep) -> UserPublic:
    user = await database.write(_create, body.username, body.resolved_display_name())
    return UserPublic.model_validate(user)


@router.get(
    "/users",
    summary="Find a user by name",
    responses=problem_responses(404, 422, 503),
)
async def find_user(
    username: Annotated[str, Query(pattern=NAME_PATTERN, description="The exact username")],
    _caller: AnyUser,
    database: DatabaseDep,
) -> UserPublic:
    return UserPublic.model_validate(await database.read(_by_name, username))


@router.get(
    "/users/{user_id}",
    summary="Get a user",
    responses=problem_responses(404, 422, 503),
)
async def get_user(user_id: str, _admin: Admin, database: DatabaseDep) -> UserPublic:
    user = await database.read(_get, user_id)
    return UserPublic.model_validate(user)
