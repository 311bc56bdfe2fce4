"""Teams and their members. Creating a team makes the caller its owner; a user sees
only the teams they are a member of (a site admin sees all)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_api.access import AnyUser, TeamMemberOf, TeamOwnerOf
from danube_api.auth import Authenticator
from danube_api.deps import DatabaseDep, PageDep
from danube_api.problems import problem_responses
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import MembershipPublic, MembershipPut, Page, TeamCreate, TeamPublic
from danube_shared.db.paging import check_page
from danube_shared.db.repositories import TeamRepository
from danube_shared.db.schema import Team, TeamMember, TeamRole
from danube_shared.errors import NotFound

router = APIRouter(prefix=API_PREFIX, tags=["teams"])


# The units of work of these routes.


def _create(session: Session, name: str, owner_id: str) -> Team:
    repository = TeamRepository(session)
    team = repository.create(name=name)
    repository.put_member(team.id, owner_id, TeamRole.OWNER)
    return team


def _list(session: Session, limit: int, offset: int) -> list[TeamPublic]:
    teams = TeamRepository(session).list_teams(limit=limit, offset=offset)
    return [TeamPublic.model_validate(team) for team in teams]


def _list_of_member(session: Session, user_id: str, limit: int, offset: int) -> list[TeamPublic]:
    check_page(limit, offset)
    statement = (
        select(Team)
        .join(TeamMember, TeamMember.team_id == Team.id)
        .where(TeamMember.user_id == user_id)
        .order_by(Team.name)
        .limit(limit)
        .offset(offset)
    )
    return [TeamPublic.model_validate(team) for team in session.scalars(statement)]


def _get(session: Session, team_id: str) -> Team:
    return TeamRepository(session).get(team_id)


def _put_member(
    session: Session, team_id: str, user_id: str, role: TeamRole
) -> tuple[TeamMember, bool]:
    return TeamRepository(session).put_member(team_id, user_id, role)


def _remove_member(session: Session, team_id: str, user_id: str) -> None:
    member = session.get(TeamMember, (team_id, user_id))
    if member is None:
        raise NotFound(f"user {user_id} is not a member of team {team_id}")
    session.delete(member)
    session.flush()


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
async def create_team(body: TeamCreate, caller: AnyUser, database: DatabaseDep) -> TeamPublic:
    return TeamPublic.model_validate(await database.write(_create, body.name, caller.user_id))


@router.get(
    "/teams",
    summary="List the caller's teams (a site admin: every team), by name",
    responses=problem_responses(422, 503),
)
async def list_teams(caller: AnyUser, database: DatabaseDep, page: PageDep) -> Page[TeamPublic]:
    if caller.is_admin:
        rows = await database.read(_list, page.limit + 1, page.offset)
    else:
        rows = await database.read(_list_of_member, caller.user_id, page.limit + 1, page.offset)
    return Page[TeamPublic].of(rows, limit=page.limit, offset=page.offset)


@router.get(
    "/teams/{team_id}",
    summary="Get a team",
    responses=problem_responses(404, 422, 503),
)
async def get_team(team_id: str, _grant: TeamMemberOf, database: DatabaseDep) -> TeamPublic:
    return TeamPublic.model_validate(await database.read(_get, team_id))


def _forget_roles(request: Request, team_id: str) -> None:
    """This node's cached team access answers must see the membership change at once."""
    authenticator: Authenticator = request.state.authenticator
    authenticator.team_roles.forget_team(team_id)


@router.put(
    "/teams/{team_id}/members/{user_id}",
    summary="Add a user to a team, or change their role",
    response_description="The membership: 201 if the user joined, 200 if the role changed",
    responses={
        status.HTTP_201_CREATED: {"model": MembershipPublic, "description": "The user joined"},
        **problem_responses(404, 413, 422, 503),
    },
)
async def put_member(  # noqa: PLR0917 -- FastAPI passes route parameters by name
    team_id: str,
    user_id: str,
    body: MembershipPut,
    _grant: TeamOwnerOf,
    database: DatabaseDep,
    response: Response,
    request: Request,
) -> MembershipPublic:
    member, created = await database.write(_put_member, team_id, user_id, TeamRole(body.role))
    _forget_roles(request, team_id)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return MembershipPublic.model_validate(member)


@router.get(
    "/teams/{team_id}/members",
    summary="List a team's members, oldest membership first",
    responses=problem_responses(404, 422, 503),
)
async def list_members(
    team_id: str, _grant: TeamMemberOf, database: DatabaseDep, page: PageDep
) -> Page[MembershipPublic]:
    rows = await database.read(_list_members, team_id, page.limit + 1, page.offset)
    return Page[MembershipPublic].of(rows, limit=page.limit, offset=page.offset)


@router.delete(
    "/teams/{team_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a user from a team",
    responses=problem_responses(404, 422, 503),
)
async def remove_member(
    team_id: str, user_id: str, _grant: TeamOwnerOf, database: DatabaseDep, request: Request
) -> Response:
    await database.write(_remove_member, team_id, user_id)
    _forget_roles(request, team_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
