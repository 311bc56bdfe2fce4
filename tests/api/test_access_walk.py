"""Every `/api/v1` route of the OpenAPI document refuses the callers DESIGN 11 says it
must: no token, a garbage, revoked, expired or job token (401); a worker on a user
route and a user on a worker route (403); a member of another team on a team's object
(404). The rule of each route is read from the document (`x-danube-access`), which the
server derives from the dependency the route declares."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from danube_shared.db.engine import Database
from danube_shared.db.timestamps import utcnow
from danube_shared.token_issuing import issue_user_token
from danube_shared.tokens import TokenKind, new_token
from tests.api.conftest import (
    ApiCaller,
    Callers,
    World,
    assert_problem,
    bearer,
    new_job,
    send_without_token,
)

WORKER_RULES = {"worker", "job-worker"}
TEAM_SCOPED = ("team-", "pipeline-", "job-")


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
    ]


async def document_of(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


async def path_values(client: httpx.AsyncClient, world: World, callers: Callers) -> dict[str, str]:
    job = await new_job(client, world.pipeline_id)
    return {
        "team_id": world.team_id,
        "pipeline_id": world.pipeline_id,
        "job_id": job["id"],
        "user_id": callers.member.id,
        "worker_id": callers.worker.id,
        "token_id": "no-such-token",
        "position": "0",
        "name": "SOME_SECRET",
    }


async def call(  # noqa: PLR0917 -- one request of the walk, named by its parts in order
    client: httpx.AsyncClient,
    method: str,
    path: str,
    operation: dict[str, Any],
    values: dict[str, str],
    headers: dict[str, str] | None,
) -> httpx.Response:
    url = path.format(**values)
    content = "application/json" in operation.get("requestBody", {}).get("content", {})
    kwargs: dict[str, Any] = {"json": {}} if content else {"content": b""}
    if headers is None:
        return await send_without_token(client, method, url, **kwargs)
    return await client.request(method, url, headers=headers, **kwargs)


async def test_every_api_route_declares_its_access_rule_and_its_refusals(
    client: httpx.AsyncClient,
):
    document = await document_of(client)
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    undeclared = [
        f"{method} {path}"
        for method, path, operation in operations(document)
        if "x-danube-access" not in operation
        or operation.get("security") != [{"bearer": []}]
        or not {"401", "403", "404"} <= set(operation["responses"])
    ]
    assert undeclared == []


async def test_every_rule_route_refuses_every_caller_without_a_valid_user_or_worker_token(
    client: httpx.AsyncClient, world: World, callers: Callers, database: Database, admin: ApiCaller
):
    document = await document_of(client)
    values = await path_values(client, world, callers)
    revoked = await client.post("/api/v1/user/tokens", json={"name": "soon revoked"})
    assert revoked.status_code == 201
    gone = await client.delete(f"/api/v1/user/tokens/{revoked.json()['id']}")
    assert gone.status_code == 204
    expired = await database.write(
        issue_user_token, admin.id, "expired", utcnow() - timedelta(seconds=1)
    )
    refused: dict[str, dict[str, str] | None] = {
        "no token": None,
        "garbage": bearer("not-a-token"),
        "not bearer": {"Authorization": f"Basic {admin.token}"},
        "revoked": bearer(revoked.json()["token"]),
        "expired": bearer(expired.token),
        "a job's token": bearer(new_token(TokenKind.JOB)),
    }
    walked = 0
    for method, path, operation in operations(document):
        if "x-danube-access" not in operation:
            continue
        for why, headers in refused.items():
            response = await call(client, method, path, operation, values, headers)
            assert response.status_code == 401, (method, path, why, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            walked += 1
    assert walked >= 6 * 20


async def test_a_worker_token_is_refused_on_user_routes_and_a_user_token_on_worker_routes(
    client: httpx.AsyncClient, world: World, callers: Callers
):
    document = await document_of(client)
    values = await path_values(client, world, callers)
    seen: set[str] = set()
    for method, path, operation in operations(document):
        rule = operation.get("x-danube-access")
        if rule is None or rule == "any-token":
            continue
        seen.add(rule)
        wrong = callers.member if rule in WORKER_RULES else callers.worker
        response = await call(client, method, path, operation, values, wrong.headers)
        assert_problem(response, 403)
        if rule in WORKER_RULES:
            # A site admin is a user too: no user token reaches a worker route.
            assert_problem(await call(client, method, path, operation, values, {}), 403)
    assert {"user", "admin", "team-member", "team-owner", "pipeline-maintainer"} <= seen


async def test_a_member_of_another_team_gets_404_for_every_object_of_the_team(
    client: httpx.AsyncClient, world: World, callers: Callers
):
    document = await document_of(client)
    values = await path_values(client, world, callers)
    walked = 0
    for method, path, operation in operations(document):
        rule = operation.get("x-danube-access", "")
        if rule in WORKER_RULES or not rule.startswith(TEAM_SCOPED):
            continue
        response = await call(client, method, path, operation, values, callers.outsider.headers)
        body = assert_problem(response, 404)
        assert "not found" in body["detail"]
        walked += 1
    assert walked >= 12
