"""The one mapping from errors to HTTP responses: `application/problem+json` (RFC 9457).

Every error response of the API is built here: domain errors (`DanubeError`), request
validation errors (rewritten from FastAPI's 422 shape into a problem naming the fields),
Starlette's own HTTP errors (unknown route, wrong method, body too large) and the generic
500. A problem never carries an input value, an exception's text from outside the
`DanubeError` hierarchy, or a traceback: the input of a rejected secret is its value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from danube_shared.errors import (
    Conflict,
    DanubeError,
    DatabaseError,
    Forbidden,
    InvalidInput,
    KeydRejected,
    KeydUnavailable,
    NotFound,
    SchemaNotAtHead,
    Unauthenticated,
)
from danube_shared.logs import get_logger

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
_TYPE_PREFIX: Final = "urn:danube:problem:"
# At most this many field errors are spelled out in `detail`; `errors` lists them all.
_DETAIL_FIELDS: Final = 3

log = get_logger(__name__)


class FieldProblem(BaseModel):
    """One invalid field of a rejected request."""

    model_config = ConfigDict(frozen=True)

    field: str
    message: str


class Problem(BaseModel):
    """An error response: RFC 9457 problem details."""

    model_config = ConfigDict(frozen=True)

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


class ProblemResponse(Response):
    """A response whose body is a `Problem`, with the problem media type."""

    media_type = PROBLEM_MEDIA_TYPE

    def __init__(self, problem: Problem, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(
            content=problem.model_dump_json(exclude_none=True),
            status_code=problem.status,
            headers=headers,
        )


def problem(status: int, code: str, title: str, detail: str) -> Problem:
    return Problem(type=_TYPE_PREFIX + code, title=title, status=status, detail=detail)


# Most specific first: the first entry the error is an instance of answers it.
_DOMAIN: Final[Sequence[tuple[type[DanubeError], int, str]]] = (
    (Unauthenticated, 401, "Unauthenticated"),
    (Forbidden, 403, "Forbidden"),
    (NotFound, 404, "Not found"),
    (Conflict, 409, "Conflict"),
    (InvalidInput, 422, "Invalid input"),
    (SchemaNotAtHead, 503, "Database schema not at head"),
    (DatabaseError, 503, "Database unavailable"),
    (KeydUnavailable, 503, "keyd unavailable"),
    # keyd answered but refused (a ciphertext under another key, too many secrets): a
    # problem upstream of the API, which retrying the same request will not fix.
    (KeydRejected, 502, "keyd rejected the request"),
)


def domain_problem(error: DanubeError) -> Problem:
    """The problem for a domain error. Their messages are written to be shown."""
    for kind, status, title in _DOMAIN:
        if isinstance(error, kind):
            return problem(status, error.code, title, error.message)
    return internal_problem()


def internal_problem() -> Problem:
    return problem(
        500,
        "internal",
        "Internal server error",
        "the server failed to handle the request; the request id names it in the logs",
    )


def _field_name(loc: Sequence[int | str]) -> str:
    """`("body", "steps", 0, "name")` -> `steps[0].name`; `("query", "limit")` ->
    `query parameter limit`."""
    if not loc:
        return "request"
    where, *rest = loc
    text = ""
    for part in rest:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    if where == "body":
        return text or "body"
    if where in ("path", "query", "header"):
        return f"{where} parameter {text}"
    return ".".join(str(part) for part in loc)


def _field_message(error: Mapping[str, Any]) -> str:
    # Never the `input`: for a secret it is the value. pydantic's `msg` does not embed it,
    # and the custom validators here word their messages without it.
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        context = error.get("ctx")
        if isinstance(context, Mapping) and "error" in context:
            message = f"{message}: {context['error']}"
    return message


def validation_problem(errors: Iterable[Mapping[str, Any]]) -> Problem:
    fields = [
        FieldProblem(field=_field_name(tuple(error.get("loc", ()))), message=_field_message(error))
        for error in errors
    ]
    shown = "; ".join(f"{field.field}: {field.message}" for field in fields[:_DETAIL_FIELDS])
    if len(fields) > _DETAIL_FIELDS:
        shown += f" (and {len(fields) - _DETAIL_FIELDS} more, see errors)"
    return Problem(
        type=_TYPE_PREFIX + "invalid_request",
        title="Invalid request",
        status=422,
        detail=shown or "the request is invalid",
        errors=fields,
    )


# RFC 6750: a 401 names the scheme the client should use.
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="danube"'}

_HTTP_TITLES: Final = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Content too large",
    415: "Unsupported media type",
}


def error_problem(exc: Exception) -> tuple[Problem, Mapping[str, str] | None]:
    """The problem (and extra headers) answering an exception a handler caught."""
    if isinstance(exc, Unauthenticated):
        return domain_problem(exc), _CHALLENGE
    if isinstance(exc, DanubeError):
        return domain_problem(exc), None
    if isinstance(exc, RequestValidationError):
        return validation_problem(exc.errors()), None
    if isinstance(exc, StarletteHTTPException):
        title = _HTTP_TITLES.get(exc.status_code, "HTTP error")
        code = title.lower().replace(" ", "_")
        detail = exc.detail if exc.status_code != 404 else "no such resource"
        return problem(exc.status_code, code, title, detail), exc.headers
    return internal_problem(), None


def _allowed_methods(request: Request) -> str:
    """Every method of the request's path: Starlette's 405 names only the methods of the
    first route that matched the path, not those of the path's other routes."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        route = context.original_route
        match, _ = route.matches({**request.scope, "method": "_"})
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def problem_response(exc: Exception, *, allow: str | None = None) -> ProblemResponse:
    """The response answering an exception a handler caught, with `allow` as the `Allow`
    header of a 405: the handlers' answer, and the worker lane's (`worker_lane`)."""
    found, headers = error_problem(exc)
    if allow is not None:
        headers = {**(headers or {}), "Allow": allow}
    if isinstance(exc, DanubeError) and found.status >= 500:
        log.warning("request failed", error=exc.code, detail=exc.message)
    return ProblemResponse(found, headers=headers)


async def _on_error(request: Request, exc: Exception) -> Response:
    not_allowed = isinstance(exc, StarletteHTTPException) and exc.status_code == 405
    return problem_response(exc, allow=_allowed_methods(request) if not_allowed else None)


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error the framework can catch to the problem responses above.

    Exceptions outside these types reach `danube_api.request_context`, which logs them
    and answers `internal_problem()`.
    """
    for kind in (DanubeError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, _on_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can answer."""
    return {
        status: {"model": Problem, "description": _RESPONSE_DESCRIPTIONS[status]}
        for status in statuses
    }


_RESPONSE_DESCRIPTIONS: Final = {
    401: "No token, or an unknown, revoked or expired one, or a job's token",
    403: "The caller is known but lacks the right (a worker on a user route, a lower role)",
    404: "No object with that id (or name)",
    413: "The request body is larger than the API accepts",
    409: "Conflicts with the stored state: a duplicate name or an illegal status transition",
    422: "The request's path, query or body is invalid; `errors` names each field",
    500: "Unexpected failure; the request id names it in the logs",
    502: "keyd refused the request",
    503: "The database or keyd is unavailable; retry later",
}


def use_problem_media_type(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite an OpenAPI document so error responses declare `application/problem+json`
    (FastAPI files every `model` response under the route's own media type)."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content")
                if str(status)[0] in "45" and content and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return schema
