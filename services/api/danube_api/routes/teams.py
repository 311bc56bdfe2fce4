"""Teams and their members."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from danube_api.deps import DatabaseDep, PageDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import MembershipPublic, MembershipPut, Page, TeamCreate, TeamPublic
from danube_shared.db.repositories import TeamRepository
from danube_shared.db.schema import TeamRole

router = APIRouter(prefix=API_PREFIX, tags=["teams"])


@router.post(
    "/teams",
    status_code=status.HTTP_201_CREATED,
    summary="Create a team",
    responses=problem_responses(409, 413, 422, 503),
)
async def create_team(body: TeamCreate, database: DatabaseDep) -> TeamPublic:
    async with database.write() as session:
        team = await TeamRepository(session).create(name=body.name)
    return TeamPublic.model_validate(team)


@router.get(
    "/teams",
    summary="List teams, by name",
    responses=problem_responses(422, 503),
)
async def list_teams(database: DatabaseDep, page: PageDep) -> Page[TeamPublic]:
    async with database.read() as session:
        teams = await TeamRepository(session).list_teams(limit=page.limit + 1, offset=page.offset)
        rows = [TeamPublic.model_validate(team) for team in teams]
    return Page[TeamPublic].of(rows, limit=page.limit, offset=page.offset)


@router.get(
    "/teams/{team_id}",
    summary="Get a team",
    responses=problem_responses(404, 422, 503),
)
async def get_team(team_id: str, database: DatabaseDep) -> TeamPublic:
    async with database.read() as session:
        team = await TeamRepository(session).get(team_id)
    return TeamPublic.model_validate(team)


@router.put(
    "/teams/{team_id}/members/{user_id}",
    summary="Add a user to a team, or change their role",
    response_description="The membership: 201 if the user joined, 200 if the role changed",
    responses={
        status.HTTP_201_CREATED: {"model": MembershipPublic, "description": "The user joined"},
        **problem_responses(404, 413, 422, 503),
    },
)
async def put_member(
    team_id: str, user_id: str, body: MembershipPut, database: DatabaseDep, response: Response
) -> MembershipPublic:
    async with database.write() as session:
        member, created = await TeamRepository(session).put_member(
            team_id, user_id, TeamRole(body.role)
        )
    if created:
        response.status_code = status.HTTP_201_CREATED
    return MembershipPublic.model_validate(member)


@router.get(
    "/teams/{team_id}/members",
    summary="List a team's members, oldest membership first",
    responses=problem_responses(404, 422, 503),
)
async def list_members(
    team_id: str, database: DatabaseDep, page: PageDep
) -> Page[MembershipPublic]:
    async with database.read() as session:
        members = await TeamRepository(session).list_members(
            team_id, limit=page.limit + 1, offset=page.offset
        )
        rows = [MembershipPublic.model_validate(member) for member in members]
    return Page[MembershipPublic].of(rows, limit=page.limit, offset=page.offset)
