"""Pipelines: a team's named, ordered step definitions."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from danube_api.access import PipelineMember, TeamMaintainerOf, TeamMemberOf
from danube_api.deps import DatabaseDep, PageDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import Page, PipelineCreate, PipelinePublic
from danube_shared.db.repositories import PipelineRepository
from danube_shared.db.schema import Pipeline, StepDefinition

router = APIRouter(prefix=API_PREFIX, tags=["pipelines"])


def _create(session: Session, team_id: str, name: str, steps: Sequence[StepDefinition]) -> Pipeline:
    return PipelineRepository(session).create(team_id, name=name, steps=steps)


def _list(session: Session, team_id: str, limit: int, offset: int) -> list[PipelinePublic]:
    pipelines = PipelineRepository(session).list_for_team(team_id, limit=limit, offset=offset)
    return [PipelinePublic.model_validate(pipeline) for pipeline in pipelines]


def _get(session: Session, pipeline_id: str) -> Pipeline:
    return PipelineRepository(session).get(pipeline_id)


@router.post(
    "/teams/{team_id}/pipelines",
    status_code=status.HTTP_201_CREATED,
    summary="Create a pipeline of a team",
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def create_pipeline(
    team_id: str, body: PipelineCreate, _grant: TeamMaintainerOf, database: DatabaseDep
) -> PipelinePublic:
    steps = [
        StepDefinition(name=step.name, command=step.command, timeout_s=step.timeout_s)
        for step in body.steps
    ]
    pipeline = await database.write(_create, team_id, body.name, steps)
    return PipelinePublic.model_validate(pipeline)


@router.get(
    "/teams/{team_id}/pipelines",
    summary="List a team's pipelines, by name",
    responses=problem_responses(404, 422, 503),
)
async def list_pipelines(
    team_id: str, _grant: TeamMemberOf, database: DatabaseDep, page: PageDep
) -> Page[PipelinePublic]:
    rows = await database.read(_list, team_id, page.limit + 1, page.offset)
    return Page[PipelinePublic].of(rows, limit=page.limit, offset=page.offset)


@router.get(
    "/pipelines/{pipeline_id}",
    summary="Get a pipeline",
    responses=problem_responses(404, 422, 503),
)
async def get_pipeline(
    pipeline_id: str, _grant: PipelineMember, database: DatabaseDep
) -> PipelinePublic:
    pipeline = await database.read(_get, pipeline_id)
    return PipelinePublic.model_validate(pipeline)
