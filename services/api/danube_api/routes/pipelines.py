"""Pipelines: a team's named, ordered step definitions."""

from __future__ import annotations

from fastapi import APIRouter, status

from danube_api.deps import DatabaseDep, PageDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import Page, PipelineCreate, PipelinePublic
from danube_shared.db.repositories import PipelineRepository
from danube_shared.db.schema import StepDefinition

router = APIRouter(prefix=API_PREFIX, tags=["pipelines"])


@router.post(
    "/teams/{team_id}/pipelines",
    status_code=status.HTTP_201_CREATED,
    summary="Create a pipeline of a team",
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def create_pipeline(
    team_id: str, body: PipelineCreate, database: DatabaseDep
) -> PipelinePublic:
    steps = [StepDefinition(name=step.name, command=step.command) for step in body.steps]
    async with database.write() as session:
        pipeline = await PipelineRepository(session).create(team_id, name=body.name, steps=steps)
    return PipelinePublic.model_validate(pipeline)


@router.get(
    "/teams/{team_id}/pipelines",
    summary="List a team's pipelines, by name",
    responses=problem_responses(404, 422, 503),
)
async def list_pipelines(
    team_id: str, database: DatabaseDep, page: PageDep
) -> Page[PipelinePublic]:
    async with database.read() as session:
        pipelines = await PipelineRepository(session).list_for_team(
            team_id, limit=page.limit + 1, offset=page.offset
        )
        rows = [PipelinePublic.model_validate(pipeline) for pipeline in pipelines]
    return Page[PipelinePublic].of(rows, limit=page.limit, offset=page.offset)


@router.get(
    "/pipelines/{pipeline_id}",
    summary="Get a pipeline",
    responses=problem_responses(404, 422, 503),
)
async def get_pipeline(pipeline_id: str, database: DatabaseDep) -> PipelinePublic:
    async with database.read() as session:
        pipeline = await PipelineRepository(session).get(pipeline_id)
    return PipelinePublic.model_validate(pipeline)
