"""The worker lane: the worker's busiest routes answered without FastAPI's per-request
machinery, exactly as their FastAPI routes answer them.

A worker's job costs the API five requests (the claim, two step updates, the finish, and
the job's creation by a member), plus its log appends and heartbeats. Profiled under
`job_e2e` (py-spy), the route bodies were a tenth of the API's time; FastAPI's
dependency solving, routing (a regular expression per route, twice), request parsing and
response validation and serialisation took most of the rest. This pure ASGI middleware,
the innermost one (inside `RequestContextMiddleware` and `BodyLimitMiddleware`, so every
request keeps its request id, summary log line and body cap), recognises these routes by
their method and path with plain string work:

    POST  /api/v1/worker/claim                         routes.worker.claim
    PATCH /api/v1/jobs/{job_id}/steps/{position}       routes.jobs.update_step
    POST  /api/v1/jobs/{job_id}/steps/{position}/log   routes.jobs.append_log
    POST  /api/v1/jobs/{job_id}/heartbeat              routes.jobs.heartbeat
    POST  /api/v1/jobs/{job_id}/finish                 routes.jobs.finish_job
    POST  /api/v1/pipelines/{pipeline_id}/jobs         routes.jobs.create_job

(the last is a member's, not a worker's: the creation that feeds the worker's claims).

It answers a request only when the request is well formed as the route declares it
(path, query and body valid, a JSON body sent as `application/json`): then it checks the
token with the same rule (`access.worker_of`, `access.team_grant`), calls the same
`JobService` method and renders the outcome, the service's errors included, with the same
functions (`problems.problem_response`, `routes.jobs.append_answer` and `create_answer`),
so the answer is the route's own. Anything else it declines: the request goes on to the
FastAPI route, which stays declared and documented (the OpenAPI document is untouched),
with the body the lane already read replayed, and FastAPI answers it, its exact 422s
included. For a valid request
FastAPI, too, does nothing but check the token and call the service, so which path
served it does not change its answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from danube_api.access import Scope as AccessScope
from danube_api.access import TeamGrant, team_grant, worker_of
from danube_api.auth import Authenticator, WorkerCaller
from danube_api.job_service import JobService
from danube_api.problems import problem_response
from danube_api.routes import jobs, worker
from danube_api.routes.jobs import JSON_MEDIA_TYPE, MAX_LOG_OFFSET, append_answer, create_answer
from danube_api.routes.paths import API_PREFIX
from danube_api.schemas import (
    Heartbeat,
    JobClaimed,
    JobFinish,
    JobPublic,
    StepEnded,
    StepPublic,
    StepStarted,
    StepUpdate,
)
from danube_shared.db.engine import Database
from danube_shared.db.schema import Status, TeamRole
from danube_shared.errors import DanubeError

_CLAIM_PATH: Final = API_PREFIX + "/worker/claim"
_JOBS_PREFIX: Final = API_PREFIX + "/jobs/"
_PIPELINES_PREFIX: Final = API_PREFIX + "/pipelines/"
_MAX_POSITION: Final = 2**31 - 1
_STEP_UPDATE: Final[TypeAdapter[StepStarted | StepEnded]] = TypeAdapter(StepUpdate)
_JOB_FINISH: Final = TypeAdapter(JobFinish)
_BodyT = TypeVar("_BodyT")


class _Decline:
    """The lane's answer for a request it leaves to its FastAPI route: `receive` gives
    the route the request's messages, those the lane already read first."""

    __slots__ = ("receive",)

    def __init__(self, receive: Receive) -> None:
        self.receive = receive


Lane = Callable[["_Call"], Awaitable[Response | _Decline]]


def _plain_int(text: str, maximum: int) -> int | None:
    """`text` as an integer if it is plain ASCII digits without a leading zero, at most
    `maximum`; else None, and the route, which parses more forms, decides."""
    if not text or len(text) > 16 or not text.isascii() or not text.isdigit():
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    value = int(text)
    return value if value <= maximum else None


def _query_int(query: bytes, name: bytes, maximum: int) -> int | None:
    """The one parameter of a query that holds exactly `name=<plain integer>`."""
    key, equals, value = query.partition(b"=")
    if key != name or not equals:
        return None
    return _plain_int(value.decode("latin-1"), maximum)


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The first header `name`, as Starlette's `Headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class _Body:
    """A request body read by the lane, with the messages it came in, so that a request
    the lane declines after reading reaches the route as the server sent it."""

    __slots__ = ("data", "messages")

    def __init__(self, messages: list[Message], data: bytes | None) -> None:
        self.messages = messages
        self.data = data  # None: the body did not arrive whole (the client hung up)

    def replay(self, receive: Receive) -> Receive:
        pending = list(self.messages)

        async def replaying() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return replaying


class _Call:
    """One request the lane took: its scope and `receive`, the route it stands for, and
    the path parameters the lane parsed."""

    __slots__ = ("object_id", "position", "receive", "route", "scope")

    def __init__(
        self, scope: Scope, receive: Receive, route: APIRoute, *, object_id: str, position: int
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.route = route
        self.object_id = object_id  # the path's `job_id` (`pipeline_id` for a creation)
        self.position = position

    async def worker(self) -> WorkerCaller:
        """The caller, who must hold a worker token (`DanubeError` otherwise)."""
        authenticator: Authenticator = self.scope["state"]["authenticator"]
        authorization = _header(self.scope, b"authorization")
        return await worker_of(
            authenticator, None if authorization is None else authorization.decode("latin-1")
        )

    async def pipeline_member(self) -> TeamGrant:
        """The caller's grant in the team of the path's pipeline (`PipelineMember`)."""
        authenticator: Authenticator = self.scope["state"]["authenticator"]
        database: Database = self.scope["state"]["database"]
        authorization = _header(self.scope, b"authorization")
        return await team_grant(
            authenticator,
            database,
            None if authorization is None else authorization.decode("latin-1"),
            scope=AccessScope.PIPELINE,
            object_id=self.object_id,
            least=TeamRole.MEMBER,
        )

    @property
    def jobs(self) -> JobService:
        service: JobService = self.scope["state"]["job_service"]
        return service

    def take(self) -> None:
        """The lane answers: set what the router would have, the request log names the
        route's path."""
        self.scope["route"] = self.route

    def decline(self, body: _Body | None = None) -> _Decline:
        return _Decline(self.receive if body is None else body.replay(self.receive))


async def _read_body(receive: Receive) -> _Body:
    """The whole body; an `HTTPException` (413) from the body cap passes through."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return _Body(messages, None)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return _Body(messages, b"".join(chunks))


def _valid(adapter: TypeAdapter[_BodyT], scope: Scope, body: _Body) -> _BodyT | None:
    """The body as the route's body model, if it was sent as `application/json` and is
    valid, decoded and validated as FastAPI does both; else None: the lane declines,
    and the route gives its own 422 or 400."""
    if body.data is None or _header(scope, b"content-type") != b"application/json":
        return None
    try:
        return adapter.validate_python(json.loads(body.data), from_attributes=True)
    except (ValueError, RecursionError):
        # JSON or UTF-8 that does not decode, or a pydantic `ValidationError`.
        return None


async def _body_as(adapter: TypeAdapter[_BodyT], call: _Call) -> _BodyT | Response | _Decline:
    """The request's JSON body as the route's body model, the request then taken; or the
    answer when it is not: the body cap's 413, or a decline (`_valid`)."""
    try:
        body = await _read_body(call.receive)
    except HTTPException as exc:
        call.take()
        return problem_response(exc)
    valid = _valid(adapter, call.scope, body)
    if valid is None:
        return call.decline(body)
    call.take()
    return valid


class WorkerLane:
    """The worker's hot routes (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The routes' own objects, as the router puts them in the scope (the request log
        # names their paths). Read from their routers, not the app's route contexts:
        # FastAPI builds those lazily, and building them all costs the start-up 60 ms.
        by_endpoint = {
            route.endpoint: route
            for route in (*worker.router.routes, *jobs.router.routes)
            if isinstance(route, APIRoute)
        }
        self._claim_route = by_endpoint[worker.claim]
        self._create_route = by_endpoint[jobs.create_job]
        # By method, number of path segments after `/jobs/` and the fixed ones among them.
        self._job_lanes: dict[tuple[str, int, str, str], tuple[Lane, APIRoute]] = {
            ("POST", 2, "heartbeat", ""): (self._heartbeat, by_endpoint[jobs.heartbeat]),
            ("POST", 2, "finish", ""): (self._finish, by_endpoint[jobs.finish_job]),
            ("PATCH", 3, "steps", ""): (self._update_step, by_endpoint[jobs.update_step]),
            ("POST", 4, "steps", "log"): (self._append_log, by_endpoint[jobs.append_log]),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._match(scope, receive) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        lane, call = found
        outcome = await lane(call)
        if isinstance(outcome, _Decline):
            await self.app(scope, outcome.receive, send)
        else:
            await outcome(scope, receive, send)

    def _match(self, scope: Scope, receive: Receive) -> tuple[Lane, _Call] | None:
        path: str = scope["path"]
        if scope.get("root_path"):
            return None  # mounted under a prefix: left to the router, which strips it
        if path == _CLAIM_PATH:
            if scope["method"] != "POST":
                return None
            return self._claim, _Call(scope, receive, self._claim_route, object_id="", position=0)
        if path.startswith(_JOBS_PREFIX):
            return self._match_job(scope, receive, path[len(_JOBS_PREFIX) :])
        if path.startswith(_PIPELINES_PREFIX):
            return self._match_creation(scope, receive, path[len(_PIPELINES_PREFIX) :])
        return None

    def _match_job(self, scope: Scope, receive: Receive, rest: str) -> tuple[Lane, _Call] | None:
        """A job's worker route, from the path after `/jobs/`."""
        parts = rest.split("/")
        fixed = (*parts[1::2], "", "")
        found = self._job_lanes.get((scope["method"], len(parts), fixed[0], fixed[1]))
        position = _plain_int(parts[2], _MAX_POSITION) if len(parts) > 2 else 0
        if found is None or not parts[0] or position is None:
            return None
        lane, route = found
        return lane, _Call(scope, receive, route, object_id=parts[0], position=position)

    def _match_creation(
        self, scope: Scope, receive: Receive, rest: str
    ) -> tuple[Lane, _Call] | None:
        """A job's creation, from the path after `/pipelines/`."""
        pipeline_id, slash, tail = rest.partition("/")
        if scope["method"] != "POST" or tail != "jobs" or not slash or not pipeline_id:
            return None
        call = _Call(scope, receive, self._create_route, object_id=pipeline_id, position=0)
        return self._create_job, call

    async def _claim(self, call: _Call) -> Response | _Decline:
        wait = 0
        query: bytes = call.scope["query_string"]
        if query:
            found = _query_int(query, b"wait", worker.MAX_CLAIM_WAIT_S)
            if found is None:
                return call.decline()
            wait = found
        call.take()
        try:
            caller = await call.worker()
            claimed = await call.jobs.claim(
                caller.worker_id,
                wait_s=wait,
                gone=worker.HungUp(Request(call.scope, call.receive)),
            )
        except DanubeError as exc:
            return problem_response(exc)
        if claimed is None:
            return Response(status_code=204)
        answer = JobClaimed(job=JobPublic.model_validate(claimed.job), token=claimed.token)
        return _json(answer.model_dump_json())

    async def _create_job(self, call: _Call) -> Response | _Decline:
        # The route takes no body and no query: every request on its path is valid.
        call.take()
        try:
            await call.pipeline_member()
            return await create_answer(call.jobs, call.object_id)
        except DanubeError as exc:
            return problem_response(exc)

    async def _heartbeat(self, call: _Call) -> Response | _Decline:
        call.take()
        try:
            caller = await call.worker()
            cancel_requested = await call.jobs.heartbeat(call.object_id, caller.worker_id)
        except DanubeError as exc:
            return problem_response(exc)
        return _json(Heartbeat(cancel_requested=cancel_requested).model_dump_json())

    async def _update_step(self, call: _Call) -> Response | _Decline:
        update = await _body_as(_STEP_UPDATE, call)
        if isinstance(update, Response | _Decline):
            return update
        try:
            caller = await call.worker()
            step = await call.jobs.update_step(
                call.object_id,
                caller.worker_id,
                call.position,
                status=Status(update.status),
                exit_code=getattr(update, "exit_code", None),
            )
        except DanubeError as exc:
            return problem_response(exc)
        return _json(StepPublic.model_validate(step).model_dump_json())

    async def _finish(self, call: _Call) -> Response | _Decline:
        finish = await _body_as(_JOB_FINISH, call)
        if isinstance(finish, Response | _Decline):
            return finish
        try:
            caller = await call.worker()
            job = await call.jobs.finish(
                call.object_id, caller.worker_id, Status(finish.status), finish.reason
            )
        except DanubeError as exc:
            return problem_response(exc)
        return _json(JobPublic.model_validate(job).model_dump_json())

    async def _append_log(self, call: _Call) -> Response | _Decline:
        offset = _query_int(call.scope["query_string"], b"offset", MAX_LOG_OFFSET)
        if offset is None:
            return call.decline()
        call.take()
        # The route's order: the token is checked before the body is read.
        try:
            caller = await call.worker()
            body = await _read_body(call.receive)
        except (DanubeError, HTTPException) as exc:
            return problem_response(exc)
        if body.data is None:
            return call.decline(body)
        try:
            return await append_answer(
                call.jobs,
                call.object_id,
                caller.worker_id,
                call.position,
                offset=offset,
                data=body.data,
            )
        except DanubeError as exc:
            return problem_response(exc)


def _json(text: str) -> Response:
    """A 200 JSON answer, as FastAPI writes a route's response model."""
    return Response(text, media_type=JSON_MEDIA_TYPE)
