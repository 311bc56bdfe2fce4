"""Teams and their members."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from danube_api.deps import DatabaseDep, PageDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import MembershipPublic, MembershipPut, Page, TeamCreate, TeamPublic
from danube_shared.db.repositories import TeamRepository
from danube_shared.db.schema import Team, TeamMember, TeamRole

router = APIRouter(prefix=API_PREFIX, tags=["teams"])


# The units of work of these routes.


def _create(session: Session, name: str) -> Team:
    return TeamRepository(session).create(name=name)


def _list(session: Session, limit: int, offset: int) -> list[TeamPublic]:
    teams = TeamRepository(session).list_teams(limit=limit, offset=offset)
    return [TeamPublic.model_validate(team) for team in teams]


def _get(session: Session, team_id: str) -> Team:
    return TeamRepository(session).get(team_id)


def _put_member(
    session: Session, team_id: str, user_id: str, role: TeamRole
) -> tuple[TeamMember, bool]:
    return TeamRepository(session).put_member(team_id, user_id, role)


def _list_members(
    session: Session, team_id: str, limit: int, offset: int
) -> list[MembershipPublic]:
    members = TeamRepository(session).list_members(team_id, limit=limit, offset=offset)
    return [MembershipPublic.model_validate(member) for member in members]


@router.post(
    "/teams",
    status_code=status.HTTP_201_CREATED,
    summary="Create a team",
    responses=problem_responses(409, 413, 422, 503),
)
async def create_team(body: TeamCreate, database: DatabaseDep) -> TeamPublic:
    return TeamPublic.model_validate(await database.write(_create, body.name))


@router.get(
    "/teams",
    summary="List teams, by name",
    responses=problem_responses(422, 503),
)
async def list_teams(database: DatabaseDep, page: PageDep) -> Page[TeamPublic]:
    rows = await database.read(_list, page.limit + 1, page.offset)
    return Page[TeamPublic].of(rows, limit=page.limit, offset=page.offset)


@router.get(
    "/teams/{team_id}",
    summary="Get a team",
    responses=problem_responses(404, 422, 503),
)
async def get_team(team_id: str, database: DatabaseDep) -> TeamPublic:
    return TeamPublic.model_validate(await database.read(_get, team_id))


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
    member, created = await database.write(_put_member, team_id, user_id, TeamRole(body.role))
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
    rows = await database.read(_list_members, team_id, page.limit + 1, page.offset)
    return Page[MembershipPublic].of(rows, limit=page.limit, offset=page.offset)
