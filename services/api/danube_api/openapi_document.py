"""What the OpenAPI document states beyond what FastAPI derives from the routes: the
bearer scheme, each operation's access rule, and the error answers every rule and every
body can give. Derived from the routes themselves, so the document cannot drift from
what the server enforces.

- `components.securitySchemes.bearer` (HTTP bearer) and `security: [{bearer: []}]` on
  every operation that declares a rule (DESIGN 11);
- `x-danube-access`: the rule (`any-token`, `user`, `admin`, `worker`, `job-worker`,
  `team-member`, `pipeline-maintainer`, ...), read from the route's dependencies
  (`access.rule_of`), so tests and clients read the truth from the document;
- 401, 403 and 404 on every such operation;
- 400 on every operation with a body: a body that is not UTF-8 is refused before it is
  parsed, with 400 (not 422: nothing in it could be read to name a field).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from danube_api.access import rule_of

BEARER_SCHEME: Final = "bearer"
ACCESS_EXTENSION: Final = "x-danube-access"
_PROBLEM_REF: Final = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
_ACCESS_ANSWERS: Final = {
    "401": "No token, or an unknown, revoked or expired one, or a job's token",
    "403": "The caller is known but lacks the right (a worker on a user route, a lower role)",
    "404": "No object with that id, or one of a team the caller is not a member of",
}
_NOT_UTF8: Final = "The body is not UTF-8 text, so it cannot be read as JSON"


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}


def describe_access(schema: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """Add the bearer scheme, the rules and their answers to `schema`, in place."""
    paths: dict[str, Any] = schema.get("paths", {})
    secured = False
    for context in iter_route_contexts(routes):
        route = context.original_route
        path = context.path_format
        if not isinstance(route, APIRoute) or path not in paths:
            continue
        rule = rule_of(route)
        for method in route.methods or ():
            operation: dict[str, Any] | None = paths[path].get(method.lower())
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("400", _problem_response(_NOT_UTF8))
            if rule is None:
                continue
            secured = True
            operation[ACCESS_EXTENSION] = rule
            operation["security"] = [{BEARER_SCHEME: []}]
            for status, description in _ACCESS_ANSWERS.items():
                responses.setdefault(status, _problem_response(description))
    if secured:
        components: dict[str, Any] = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token: `dnb_u_...` (a user's) or `dnb_w_...` (a worker's)",
        }
    return schema
