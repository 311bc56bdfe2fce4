"""Users."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from danube_api.deps import DatabaseDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import UserCreate, UserPublic
from danube_shared.db.repositories import UserRepository
from danube_shared.db.schema import User

router = APIRouter(prefix=API_PREFIX, tags=["users"])


def _create(session: Session, username: str, display_name: str) -> User:
    return UserRepository(session).create(username=username, display_name=display_name)


def _get(session: Session, user_id: str) -> User:
    return UserRepository(session).get(user_id)


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    summary="Create a user",
    responses=problem_responses(409, 413, 422, 503),
)
async def create_user(body: UserCreate, database: DatabaseDep) -> UserPublic:
    user = await database.write(_create, body.username, body.resolved_display_name())
    return UserPublic.model_validate(user)


@router.get(
    "/users/{user_id}",
    summary="Get a user",
    responses=problem_responses(404, 422, 503),
)
async def get_user(user_id: str, database: DatabaseDep) -> UserPublic:
    user = await database.read(_get, user_id)
    return UserPublic.model_validate(user)
