"""Worker identities, managed by a site admin: create (its token shown once), list,
revoke. Revoking a worker revokes every token of it, on this node at once
(`Authenticator.forget_worker`) and on other nodes within the cache's 5 s."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session

from danube_api.access import Admin
from danube_api.auth import Authenticator
from danube_api.deps import DatabaseDep
from danube_api.identity_schemas import WorkerCreate, WorkerCreated, WorkerPublic
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_shared.db.repositories import WorkerRepository
from danube_shared.db.timestamps import utcnow
from danube_shared.token_issuing import IssuedWorkerToken, create_worker_with_token

router = APIRouter(prefix=API_PREFIX, tags=["workers"])


def _list(session: Session) -> list[WorkerPublic]:
    return [
        WorkerPublic.model_validate(worker) for worker in WorkerRepository(session).list_workers()
    ]


def _revoke(session: Session, worker_id: str) -> None:
    WorkerRepository(session).revoke(worker_id, now=utcnow())


@router.post(
    "/workers",
    status_code=status.HTTP_201_CREATED,
    summary="Create a worker (its token is shown only in this answer)",
    responses=problem_responses(409, 413, 422, 503),
)
async def create_worker(body: WorkerCreate, _admin: Admin, database: DatabaseDep) -> WorkerCreated:
    issued: IssuedWorkerToken = await database.write(create_worker_with_token, body.name)
    record = WorkerPublic.model_validate(issued.worker)
    return WorkerCreated(**record.model_dump(), token=issued.token)


@router.get(
    "/workers",
    summary="List workers, revoked ones too, by name",
    responses=problem_responses(503),
)
async def list_workers(_admin: Admin, database: DatabaseDep) -> list[WorkerPublic]:
    return await database.read(_list)


@router.delete(
    "/workers/{worker_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a worker and every token of it",
    responses=problem_responses(404, 422, 503),
)
async def revoke_worker(
    worker_id: str, _admin: Admin, database: DatabaseDep, request: Request
) -> Response:
    await database.write(_revoke, worker_id)
    authenticator: Authenticator = request.state.authenticator
    authenticator.forget_worker(worker_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
