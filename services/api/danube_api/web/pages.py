"""The HTML pages of DESIGN 16: sign-in and the caller's teams, a team, a pipeline, a job;
and the forms that act on them (sign in and out, set a secret, run, cancel).

Every form that changes something carries the session's CSRF token (the sign-in form, a
token of its own, kept in a cookie until sign-in). Pages never contain a token or a
secret's value: the secret form is write-only and the views never read either.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from danube_api.deps import DatabaseDep, JobServiceDep, SecretServiceDep
from danube_api.schemas import SECRET_NAME_PATTERN
from danube_api.web.forms import check_csrf, read_form
from danube_api.web.page_route import PageRoute
from danube_api.web.rendering import PAGE_HEADERS, renderer_of
from danube_api.web.signed_in import (
    SESSION_COOKIE,
    JobPage,
    MaybeSignedIn,
    PipelinePage,
    SignedIn,
    TeamMaintainerPage,
    TeamPage,
    session_store,
    user_of_token,
)
from danube_api.web.views import job_view, pipeline_view, team_view, teams_of
from danube_shared.db.repositories.secrets import SecretScope
from danube_shared.db.schema import TeamRole
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import InvalidInput
from danube_shared.tokens import TokenKind, kind_of, token_sha256

SIGN_IN_COOKIE: Final = "danube_sign_in"
# As `SecretPut`: a value is non-empty and at most 64 KiB as UTF-8.
MAX_SECRET_BYTES: Final = 64 * 1024
_SECRET_NAME: Final = re.compile(SECRET_NAME_PATTERN)

router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _redirect(location: str) -> RedirectResponse:
    # 303: the browser follows a form's POST with a GET.
    return RedirectResponse(location, status_code=303, headers=PAGE_HEADERS)


def _page(
    request: Request,
    name: str,
    signed_in: SignedIn | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    context["signed_in"] = signed_in
    context["csrf_token"] = signed_in.session.csrf_token if signed_in is not None else None
    return renderer_of(request).render(request, name, context, status_code=status_code)


def _sign_in_page(
    request: Request, *, error: str | None = None, status_code: int = 200
) -> Response:
    # A fresh token per form shown; the cookie is what the POST is checked against.
    form_token = secrets.token_urlsafe(32)
    response = renderer_of(request).render(
        request,
        "sign_in.html",
        {"signed_in": None, "csrf_token": form_token, "error": error},
        status_code=status_code,
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        form_token,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    return response


@router.get("/")
async def home(request: Request, database: DatabaseDep, signed_in: MaybeSignedIn) -> Response:
    if signed_in is None:
        return _sign_in_page(request)
    caller = signed_in.caller
    teams = await database.read(teams_of, caller.user_id, is_admin=caller.is_admin)
    return _page(request, "home.html", signed_in, teams=teams)


@router.post("/sign-in")
async def sign_in(request: Request, database: DatabaseDep) -> Response:
    form = await read_form(request)
    check_csrf(form, request.cookies.get(SIGN_IN_COOKIE))
    token = form.get("token", "").strip()
    kind = kind_of(token)
    if kind is TokenKind.WORKER:
        return _sign_in_page(
            request, error="A worker token cannot sign in; use a user's API token.", status_code=401
        )
    caller = None
    if kind is TokenKind.USER:
        caller = await database.read(user_of_token, token_sha256(token), utcnow())
    if caller is None:
        return _sign_in_page(
            request, error="That token is unknown, revoked or expired.", status_code=401
        )
    session = session_store(request).open(token_sha256(token))
    response = _redirect("/")
    response.set_cookie(
        SESSION_COOKIE,
        session.session_id,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/")
    return response


@router.post("/sign-out")
async def sign_out(request: Request, signed_in: MaybeSignedIn) -> Response:
    form = await read_form(request)
    if signed_in is not None:
        check_csrf(form, signed_in.session.csrf_token)
        session_store(request).close(signed_in.session.session_id)
    response = _redirect("/")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/teams/{team_id}")
async def team_page(
    request: Request, team_id: str, access: TeamPage, database: DatabaseDep
) -> Response:
    view = await database.read(team_view, team_id)
    saved = request.query_params.get("saved")
    return _page(
        request,
        "team.html",
        access.signed_in,
        view=view,
        can_set_secrets=access.at_least(TeamRole.MAINTAINER),
        saved=saved if saved is not None and _SECRET_NAME.match(saved) else None,
    )


@router.post("/teams/{team_id}/secrets")
async def set_team_secret(
    request: Request, team_id: str, access: TeamMaintainerPage, secret_service: SecretServiceDep
) -> Response:
    form = await read_form(request)
    check_csrf(form, access.signed_in.session.csrf_token)
    name = form.get("name", "").strip()
    value = form.get("value", "")
    if not _SECRET_NAME.match(name):
        raise InvalidInput(
            "a secret's name is letters, digits and underscores, not starting with a digit"
        )
    if not value or len(value.encode("utf-8")) > MAX_SECRET_BYTES:
        raise InvalidInput("a secret's value is not empty and at most 64 KiB")
    await secret_service.put(SecretScope.for_team(team_id), name, value)
    return _redirect(f"/teams/{team_id}?saved={name}")


@router.get("/pipelines/{pipeline_id}")
async def pipeline_page(
    request: Request, pipeline_id: str, access: PipelinePage, database: DatabaseDep
) -> Response:
    view = await database.read(pipeline_view, pipeline_id)
    return _page(request, "pipeline.html", access.signed_in, view=view)


@router.post("/pipelines/{pipeline_id}/run")
async def run_pipeline(
    request: Request, pipeline_id: str, access: PipelinePage, job_service: JobServiceDep
) -> Response:
    form = await read_form(request)
    check_csrf(form, access.signed_in.session.csrf_token)
    job = await job_service.create(pipeline_id)
    return _redirect(f"/jobs/{job.id}")


@router.get("/jobs/{job_id}")
async def job_page(
    request: Request, job_id: str, access: JobPage, database: DatabaseDep
) -> Response:
    view = await database.read(job_view, job_id)
    return _page(request, "job.html", access.signed_in, view=view)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(
    request: Request, job_id: str, access: JobPage, job_service: JobServiceDep
) -> Response:
    form = await read_form(request)
    check_csrf(form, access.signed_in.session.csrf_token)
    # Pending: cancelled at once; running: the worker stops it (DESIGN 12).
    await job_service.cancel(job_id)
    return _redirect(f"/jobs/{job_id}")
