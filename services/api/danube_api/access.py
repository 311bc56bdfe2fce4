"""Who may call what: every rule of DESIGN section 11's permission table, as the one
dependency each route declares.

| rule            | caller                                  | refused                      |
| --------------- | --------------------------------------- | ---------------------------- |
| (none)          | anyone (`/healthz`, `/readyz`)          |                              |
| `AnyCaller`     | a user or a worker token                | 401                          |
| `AnyUser`       | a user token                            | 401; a worker 403            |
| `Admin`         | a site admin's user token               | 401; a worker or user 403    |
| `AnyWorker`     | a worker token                          | 401; a user 403              |
| `TeamMember` .. | a member of the object's team with at   | 401; a worker 403; not a     |
| `TeamOwner`     | least that role, or a site admin        | member 404; lower role 403   |
| `JobWorker`     | the worker that claimed the job         | 401; a user 403; another     |
|                 | (`JobWorkerInWrite`: checked by the     | worker's or no job 404       |
|                 | route's write unit itself)              |                              |

Each rule's dependency is registered in `RULES` under the name the OpenAPI document
gives it (`x-danube-access`: `any-token`, `user`, `admin`, `worker`, `job-worker`, and
`team-`/`pipeline-`/`job-` plus the least role); `rule_of(route)` reads it back from a
route's dependencies, so the document states what each route enforces.

The object's team is found from the route's path (`team_id`, `pipeline_id` or `job_id`)
in one query that also reads the caller's role in it, so the caller, the team and the
role are resolved once per request. Another team's objects answer 404 exactly like a
missing id, so existence never leaks.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import Depends, Request, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import Select, and_, bindparam, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from danube_api.auth import Authenticator, Caller, UserCaller, WorkerCaller
from danube_shared.db.engine import Database
from danube_shared.db.schema import Job, Pipeline, Team, TeamMember, TeamRole
from danube_shared.errors import Forbidden, NotFound

_RANK: Final = {TeamRole.MEMBER: 1, TeamRole.MAINTAINER: 2, TeamRole.OWNER: 3}


class Scope(enum.StrEnum):
    """Which path parameter names the object whose team decides."""

    TEAM = "team_id"
    PIPELINE = "pipeline_id"
    JOB = "job_id"


# Each rule's dependency, by the name the OpenAPI document gives it (`x-danube-access`),
# so the document states the rule every route enforces, read from the route itself.
RULES: Final[dict[Callable[..., Any], str]] = {}


def rule_of(route: APIRoute) -> str | None:
    """The access rule `route` declares: its outermost rule dependency (each rule is one
    dependency today, but a rule built on another would still be read as the outer
    one, the one that decides). None for a route open to anyone."""
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop(0)
        for dependency in dependant.dependencies:
            if dependency.call is not None and dependency.call in RULES:
                return RULES[dependency.call]
        pending.extend(dependant.dependencies)
    return None


@dataclass(frozen=True, slots=True)
class TeamGrant:
    """The caller's access to one object's team: `role` is None for a site admin who is
    not a member."""

    caller: UserCaller
    team_id: str
    role: TeamRole | None


# Each rule is one dependency of the request alone, not a chain (`admin` on `any_user` on
# `authenticated`): FastAPI solves every dependency of a chain as a level of its own, and
# solving took a third of the event loop's time for a job creation (cProfile).


async def _caller(request: Request) -> Caller:
    authenticator: Authenticator = request.state.authenticator
    return await authenticator.caller(request.headers.get("authorization"))


def _user(caller: Caller) -> UserCaller:
    if not isinstance(caller, UserCaller):
        raise Forbidden("a worker token may call only the worker routes")
    return caller


def _worker(caller: Caller) -> WorkerCaller:
    if not isinstance(caller, WorkerCaller):
        raise Forbidden("only a worker token may call the worker routes")
    return caller


async def authenticated(request: Request) -> Caller:
    return await _caller(request)


RULES[authenticated] = "any-token"
AnyCaller = Annotated[Caller, Depends(authenticated)]


async def any_user(request: Request) -> UserCaller:
    return _user(await _caller(request))


RULES[any_user] = "user"
AnyUser = Annotated[UserCaller, Depends(any_user)]


async def admin(request: Request) -> UserCaller:
    caller = _user(await _caller(request))
    if not caller.is_admin:
        raise Forbidden("only a site admin may do this")
    return caller


RULES[admin] = "admin"
Admin = Annotated[UserCaller, Depends(admin)]


async def worker_of(authenticator: Authenticator, authorization: str | None) -> WorkerCaller:
    """The `worker` rule (and `JobWorkerInWrite`'s) on the `Authorization` header alone:
    the worker lane (`worker_lane`) checks its requests with it, outside FastAPI."""
    return _worker(await authenticator.caller(authorization))


async def any_worker(request: Request) -> WorkerCaller:
    return _worker(await _caller(request))


RULES[any_worker] = "worker"
AnyWorker = Annotated[WorkerCaller, Depends(any_worker)]


def _team_query(scope: Scope) -> Select[str, TeamRole]:
    """One statement per scope, built once: the object's team and the caller's role in
    it (NULL when the caller is not a member)."""
    team_id: InstrumentedAttribute[str] = Team.id if scope is Scope.TEAM else Pipeline.team_id
    statement = select(team_id, TeamMember.role)
    if scope is Scope.TEAM:
        statement = statement.select_from(Team).where(Team.id == bindparam("object_id"))
    elif scope is Scope.PIPELINE:
        statement = statement.select_from(Pipeline).where(Pipeline.id == bindparam("object_id"))
    else:
        statement = (
            statement.select_from(Job)
            .join(Pipeline, Job.pipeline_id == Pipeline.id)
            .where(Job.id == bindparam("object_id"))
        )
    return statement.outerjoin(
        TeamMember,
        and_(TeamMember.team_id == team_id, TeamMember.user_id == bindparam("user_id")),
    )


_TEAM_QUERIES: Final = {scope: _team_query(scope) for scope in Scope}


def team_and_role(
    session: Session, scope: Scope, object_id: str, user_id: str
) -> tuple[str, TeamRole | None] | None:
    # The outer join makes `role` NULL for a non-member, whatever its declared type says.
    row = session.execute(
        _TEAM_QUERIES[scope], {"object_id": object_id, "user_id": user_id}
    ).first()
    if row is None:
        return None
    team_id: str = row[0]
    role: TeamRole | None = row[1]
    return team_id, role


async def team_grant(
    authenticator: Authenticator,
    database: Database,
    authorization: str | None,
    *,
    scope: Scope,
    object_id: str,
    least: TeamRole,
) -> TeamGrant:
    """`least` or more in the team of the object `object_id` names (its kind: `scope`),
    for the caller of the `Authorization` header: the rule of `team_access`, also
    checked by the worker lane (`worker_lane`) outside FastAPI."""
    caller = _user(await authenticator.caller(authorization))
    roles = authenticator.team_roles
    found = roles.get(scope.value, object_id, caller.user_id)
    if found is None:
        found = await database.read(team_and_role, scope, object_id, caller.user_id)
        if found is not None:
            roles.put(scope.value, object_id, caller.user_id, found)
    kind = scope.value.removesuffix("_id")
    if found is None:
        raise NotFound(f"{kind} {object_id} not found")
    team_id, role = found
    if caller.is_admin:
        return TeamGrant(caller, team_id, role)
    if role is None:
        raise NotFound(f"{kind} {object_id} not found")
    if _RANK[role] < _RANK[least]:
        raise Forbidden(f"this needs the {least} role in the team; you are {role}")
    return TeamGrant(caller, team_id, role)


def team_access(scope: Scope, least: TeamRole) -> params.Depends:
    """The dependency granting `least` or more in the team of the object named by the
    path parameter `scope`."""

    async def grant(request: Request) -> TeamGrant:
        authenticator: Authenticator = request.state.authenticator
        database: Database = request.state.database
        return await team_grant(
            authenticator,
            database,
            request.headers.get("authorization"),
            scope=scope,
            object_id=request.path_params[scope.value],
            least=least,
        )

    # For example `pipeline-maintainer`: the role needed in the pipeline's team.
    RULES[grant] = f"{scope.value.removesuffix('_id')}-{least.value}"
    return Depends(grant)


TeamMemberOf = Annotated[TeamGrant, team_access(Scope.TEAM, TeamRole.MEMBER)]
TeamMaintainerOf = Annotated[TeamGrant, team_access(Scope.TEAM, TeamRole.MAINTAINER)]
TeamOwnerOf = Annotated[TeamGrant, team_access(Scope.TEAM, TeamRole.OWNER)]
PipelineMember = Annotated[TeamGrant, team_access(Scope.PIPELINE, TeamRole.MEMBER)]
PipelineMaintainer = Annotated[TeamGrant, team_access(Scope.PIPELINE, TeamRole.MAINTAINER)]
JobMember = Annotated[TeamGrant, team_access(Scope.JOB, TeamRole.MEMBER)]

_JOB_WORKER: Final = select(Job.worker_id).where(Job.id == bindparam("job_id"))


def _job_worker_id(session: Session, job_id: str) -> str | None:
    return session.execute(_JOB_WORKER, {"job_id": job_id}).scalar_one_or_none()


async def job_worker(request: Request) -> WorkerCaller:
    """The worker that claimed the job of the path's `job_id`; any other caller's view
    is that the job does not exist."""
    caller = _worker(await _caller(request))
    job_id: str = request.path_params["job_id"]
    database: Database = request.state.database
    if await database.read(_job_worker_id, job_id) != caller.worker_id:
        raise NotFound(f"job {job_id} not found")
    return caller


RULES[job_worker] = "job-worker"
JobWorker = Annotated[WorkerCaller, Depends(job_worker)]


async def job_worker_in_write(request: Request) -> WorkerCaller:
    """The `job-worker` rule for a route whose write unit checks the claim itself, in
    the same transaction as its write, answering 404 for another worker's job exactly as
    `job_worker` does (`job_leases.append_log`, and `job_leases.touch` and
    `job_leases.finish` for the heartbeat, step and finish routes). Here only the token is a worker's: the claim is
    not read twice, and the route pays one database hop instead of two."""
    return _worker(await _caller(request))


RULES[job_worker_in_write] = "job-worker"
JobWorkerInWrite = Annotated[WorkerCaller, Depends(job_worker_in_write)]
