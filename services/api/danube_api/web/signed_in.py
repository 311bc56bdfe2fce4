"""Who is looking at a page: the session cookie resolved to its user, and the same team
rules as the JSON API (`danube_api.access`, DESIGN 11) for the page's object.

A page's caller comes from the session cookie, never from an `Authorization` header, so
the rules are restated here over the session: a member (or a site admin) sees a team's
objects, a lower role is refused with 403, and another team's objects answer 404 exactly
like a missing id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Final

from fastapi import Depends, Request, params
from sqlalchemy.orm import Session

from danube_api.access import Scope, team_and_role
from danube_api.auth import UserCaller
from danube_api.web.sessions import SessionStore, WebSession
from danube_shared.db.engine import Database
from danube_shared.db.repositories.tokens import TokenRepository
from danube_shared.db.schema import TeamRole
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import Forbidden, NotFound, Unauthenticated

SESSION_COOKIE: Final = "danube_session"
_RANK: Final = {TeamRole.MEMBER: 1, TeamRole.MAINTAINER: 2, TeamRole.OWNER: 3}


class SignInNeeded(Unauthenticated):
    """No open session: a page answers by showing the sign-in form."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    caller: UserCaller
    session: WebSession


@dataclass(frozen=True, slots=True)
class PageGrant:
    """The signed-in user's access to one object's team; `role` None for an admin who is
    not a member."""

    signed_in: SignedIn
    team_id: str
    role: TeamRole | None

    def at_least(self, role: TeamRole) -> bool:
        return self.signed_in.caller.is_admin or (
            self.role is not None and _RANK[self.role] >= _RANK[role]
        )


def user_of_token(session: Session, sha256: bytes, now: datetime) -> UserCaller | None:
    """The user whose active token has this hash; None for a worker's or an unknown,
    revoked or expired token."""
    active = TokenRepository(session).find_active(sha256, now=now)
    if active is None or active.user is None:
        return None
    user = active.user
    return UserCaller(
        user_id=user.id,
        username=user.username,
        display_name=user.display_name,
        is_admin=user.is_admin,
        token_id=active.token.id,
    )


def session_store(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.web_sessions
    return store


async def current_session(request: Request) -> SignedIn | None:
    """The open session of the request's cookie and its user, or None."""
    store = session_store(request)
    session = store.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    database: Database = request.state.database
    caller = await database.read(user_of_token, session.token_sha256, utcnow())
    if caller is None:
        # The token was revoked or expired: the session ends with it.
        store.close(session.session_id)
        return None
    return SignedIn(caller, session)


async def signed_in(request: Request) -> SignedIn:
    found = await current_session(request)
    if found is None:
        raise SignInNeeded("sign in with an API token to see this page")
    return found


SignedInDep = Annotated[SignedIn, Depends(signed_in)]
MaybeSignedIn = Annotated[SignedIn | None, Depends(current_session)]


def page_access(scope: Scope, least: TeamRole) -> params.Depends:
    """The dependency granting `least` or more in the team of the path's object."""

    async def grant(request: Request, who: SignedInDep) -> PageGrant:
        object_id: str = request.path_params[scope.value]
        database: Database = request.state.database
        found = await database.read(team_and_role, scope, object_id, who.caller.user_id)
        kind = scope.value.removesuffix("_id")
        if found is None:
            raise NotFound(f"{kind} {object_id} not found")
        team_id, role = found
        access = PageGrant(who, team_id, role)
        if who.caller.is_admin:
            return access
        if role is None:
            raise NotFound(f"{kind} {object_id} not found")
        if not access.at_least(least):
            raise Forbidden(f"this needs the {least} role in the team; you are {role}")
        return access

    return Depends(grant)


TeamPage = Annotated[PageGrant, page_access(Scope.TEAM, TeamRole.MEMBER)]
TeamMaintainerPage = Annotated[PageGrant, page_access(Scope.TEAM, TeamRole.MAINTAINER)]
PipelinePage = Annotated[PageGrant, page_access(Scope.PIPELINE, TeamRole.MEMBER)]
JobPage = Annotated[PageGrant, page_access(Scope.JOB, TeamRole.MEMBER)]
