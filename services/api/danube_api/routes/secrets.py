"""Write-only secrets of a team or of a pipeline: `PUT` a value, list names, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response, status

from danube_api.access import (
    PipelineMaintainer,
    PipelineMember,
    TeamMaintainerOf,
    TeamMemberOf,
)
from danube_api.deps import PageDep, PageParams, SecretServiceDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import SECRET_NAME_PATTERN, Page, SecretPublic, SecretPut
from danube_api.secret_service import SecretService
from danube_shared.db.repositories import SecretScope
from danube_shared.db.schema import Secret

router = APIRouter(prefix=API_PREFIX, tags=["secrets"])

SecretNamePath = Annotated[
    str,
    Path(
        pattern=SECRET_NAME_PATTERN,
        description="An environment variable name",
        examples=["DEPLOY_TOKEN"],
    ),
]
ScopeKind = Literal["team", "pipeline"]

_PUT_RESPONSES = {
    status.HTTP_201_CREATED: {"model": SecretPublic, "description": "The secret was created"},
    **problem_responses(404, 413, 422, 502, 503),
}


def _scope(kind: ScopeKind, scope_id: str) -> SecretScope:
    return SecretScope.for_team(scope_id) if kind == "team" else SecretScope.for_pipeline(scope_id)


def _public(secret: Secret, kind: ScopeKind, scope_id: str) -> SecretPublic:
    return SecretPublic(
        id=secret.id,
        name=secret.name,
        scope=kind,
        scope_id=scope_id,
        created_at=secret.created_at,
        updated_at=secret.updated_at,
    )


async def _put(
    secrets: SecretService, kind: ScopeKind, scope_id: str, name: str, body: SecretPut
) -> tuple[SecretPublic, int]:
    secret, created = await secrets.put(_scope(kind, scope_id), name, body.value)
    code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return _public(secret, kind, scope_id), code


async def _list(
    secrets: SecretService, kind: ScopeKind, scope_id: str, page: PageParams
) -> Page[SecretPublic]:
    infos = await secrets.list_names(
        _scope(kind, scope_id), limit=page.limit + 1, offset=page.offset
    )
    rows = [
        SecretPublic(
            id=info.id,
            name=info.name,
            scope=kind,
            scope_id=scope_id,
            created_at=info.created_at,
            updated_at=info.updated_at,
        )
        for info in infos
    ]
    return Page[SecretPublic].of(rows, limit=page.limit, offset=page.offset)


async def _delete(secrets: SecretService, kind: ScopeKind, scope_id: str, name: str) -> Response:
    await secrets.delete(_scope(kind, scope_id), name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Team secrets


@router.put(
    "/teams/{team_id}/secrets/{name}",
    summary="Set a team secret (201 created, 200 replaced)",
    response_description="The secret's metadata; never its value",
    responses=_PUT_RESPONSES,
)
async def put_team_secret(
    team_id: str,
    name: SecretNamePath,
    body: SecretPut,
    _grant: TeamMaintainerOf,
    secrets: SecretServiceDep,
    response: Response,
) -> SecretPublic:
    public, response.status_code = await _put(secrets, "team", team_id, name, body)
    return public


@router.get(
    "/teams/{team_id}/secrets",
    summary="List a team's secrets, by name (names and times only)",
    responses=problem_responses(404, 422, 503),
)
async def list_team_secrets(
    team_id: str, _grant: TeamMemberOf, secrets: SecretServiceDep, page: PageDep
) -> Page[SecretPublic]:
    return await _list(secrets, "team", team_id, page)


@router.delete(
    "/teams/{team_id}/secrets/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a team secret",
    responses=problem_responses(404, 422, 503),
)
async def delete_team_secret(
    team_id: str, name: SecretNamePath, _grant: TeamMaintainerOf, secrets: SecretServiceDep
) -> Response:
    return await _delete(secrets, "team", team_id, name)


# Pipeline secrets


@router.put(
    "/pipelines/{pipeline_id}/secrets/{name}",
    summary="Set a pipeline secret (201 created, 200 replaced)",
    response_description="The secret's metadata; never its value",
    responses=_PUT_RESPONSES,
)
async def put_pipeline_secret(
    pipeline_id: str,
    name: SecretNamePath,
    body: SecretPut,
    _grant: PipelineMaintainer,
    secrets: SecretServiceDep,
    response: Response,
) -> SecretPublic:
    public, response.status_code = await _put(secrets, "pipeline", pipeline_id, name, body)
    return public


@router.get(
    "/pipelines/{pipeline_id}/secrets",
    summary="List a pipeline's secrets, by name (names and times only)",
    responses=problem_responses(404, 422, 503),
)
async def list_pipeline_secrets(
    pipeline_id: str, _grant: PipelineMember, secrets: SecretServiceDep, page: PageDep
) -> Page[SecretPublic]:
    return await _list(secrets, "pipeline", pipeline_id, page)


@router.delete(
    "/pipelines/{pipeline_id}/secrets/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a pipeline secret",
    responses=problem_responses(404, 422, 503),
)
async def delete_pipeline_secret(
    pipeline_id: str, name: SecretNamePath, _grant: PipelineMaintainer, secrets: SecretServiceDep
) -> Response:
    return await _delete(secrets, "pipeline", pipeline_id, name)
