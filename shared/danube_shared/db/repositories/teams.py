"""Teams and their members."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.ids import new_id
from danube_shared.db.paging import check_page
from danube_shared.db.repositories.flushing import flush
from danube_shared.db.repositories.users import UserRepository
from danube_shared.db.schema import Team, TeamMember, TeamRole
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import NotFound


class TeamRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(self, *, name: str) -> Team:
        """A new team; `Conflict` if the name is taken."""
        team = Team(id=new_id(), name=name, created_at=utcnow())
        self._session.add(team)
        flush(self._session, conflict=f"a team named {name!r} already exists")
        return team

    def get(self, team_id: str) -> Team:
        team = self._session.get(Team, team_id)
        if team is None:
            raise NotFound(f"team {team_id} not found")
        return team

    def list_teams(self, *, limit: int = 50, offset: int = 0) -> Sequence[Team]:
        """One page of teams, by name."""
        check_page(limit, offset)
        statement = select(Team).order_by(Team.name).limit(limit).offset(offset)
        return (self._session.scalars(statement)).all()

    def put_member(self, team_id: str, user_id: str, role: TeamRole) -> tuple[TeamMember, bool]:
        """Make the user a member of the team with `role`, or change the role of a member.
        Returns the membership and whether it is new."""
        self.get(team_id)
        UserRepository(self._session).get(user_id)
        member = self._session.get(TeamMember, (team_id, user_id))
        created = member is None
        if member is None:
            member = TeamMember(team_id=team_id, user_id=user_id, role=role, created_at=utcnow())
            self._session.add(member)
        else:
            member.role = role
        flush(self._session, conflict=f"user {user_id} joined team {team_id} concurrently")
        return member, created

    def list_members(
        self, team_id: str, *, limit: int = 50, offset: int = 0
    ) -> Sequence[TeamMember]:
        """One page of the team's members, oldest membership first."""
        check_page(limit, offset)
        self.get(team_id)
        statement = (
            select(TeamMember)
            .where(TeamMember.team_id == team_id)
            .order_by(TeamMember.created_at, TeamMember.user_id)
            .limit(limit)
            .offset(offset)
        )
        return (self._session.scalars(statement)).all()
