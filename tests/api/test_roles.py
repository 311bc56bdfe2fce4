"""The role matrix of DESIGN 11 on teams, members, pipelines, secrets and jobs: each
route answers a caller with the role it needs (or a site admin) and refuses a lower
role with 403; the caller's own tokens and the admin-only users and workers."""

from __future__ import annotations

import itertools

import httpx
import pytest

from tests.api.conftest import ApiCaller, Callers, World, assert_problem, bearer

ROLES = ("member", "maintainer", "owner")
_names = itertools.count()

# (method, path, body, the least role that may call it)
MATRIX: list[tuple[str, str, dict[str, object] | None, str]] = [
    ("GET", "/api/v1/teams/{team}", None, "member"),
    ("GET", "/api/v1/teams/{team}/members", None, "member"),
    ("PUT", "/api/v1/teams/{team}/members/{loner}", {"role": "member"}, "owner"),
    ("DELETE", "/api/v1/teams/{team}/members/{loner}", None, "owner"),
    ("GET", "/api/v1/teams/{team}/pipelines", None, "member"),
    (
        "POST",
        "/api/v1/teams/{team}/pipelines",
        {"steps": [{"name": "a", "command": "b"}]},
        "maintainer",
    ),
    ("GET", "/api/v1/pipelines/{pipeline}", None, "member"),
    ("PUT", "/api/v1/teams/{team}/secrets/TOKEN", {"value": "v"}, "maintainer"),
    ("GET", "/api/v1/teams/{team}/secrets", None, "member"),
    ("DELETE", "/api/v1/teams/{team}/secrets/TOKEN", None, "maintainer"),
    ("PUT", "/api/v1/pipelines/{pipeline}/secrets/TOKEN", {"value": "v"}, "maintainer"),
    ("GET", "/api/v1/pipelines/{pipeline}/secrets", None, "member"),
    ("DELETE", "/api/v1/pipelines/{pipeline}/secrets/TOKEN", None, "maintainer"),
    ("POST", "/api/v1/pipelines/{pipeline}/jobs", None, "member"),
    ("GET", "/api/v1/pipelines/{pipeline}/jobs", None, "member"),
]


async def _send(  # noqa: PLR0917 -- one matrix cell, named by its parts in order
    client: httpx.AsyncClient,
    method: str,
    template: str,
    body: dict[str, object] | None,
    world: World,
    callers: Callers,
    headers: dict[str, str],
) -> httpx.Response:
    url = template.format(team=world.team_id, pipeline=world.pipeline_id, loner=callers.loner.id)
    if body is not None and "steps" in body:
        body = {**body, "name": f"p{next(_names)}"}
    return await client.request(method, url, json=body, headers=headers)


@pytest.mark.parametrize(("method", "template", "body", "least"), MATRIX)
async def test_each_role_is_answered_or_refused_as_the_matrix_says(
    *,
    client: httpx.AsyncClient,
    world: World,
    callers: Callers,
    admin: ApiCaller,
    method: str,
    template: str,
    body: dict[str, object] | None,
    least: str,
):
    # Deletes first find something to delete, so an allowed call is a success.
    async def prepare() -> None:
        if template.endswith("/secrets/TOKEN"):
            put = await client.put(
                template.format(team=world.team_id, pipeline=world.pipeline_id), json={"value": "v"}
            )
            assert put.status_code in (200, 201)
        if template.endswith("/members/{loner}") and method == "DELETE":
            put = await client.put(
                template.format(team=world.team_id, loner=callers.loner.id), json={"role": "member"}
            )
            assert put.status_code in (200, 201)

    for role in (*ROLES, "admin"):
        caller = admin if role == "admin" else getattr(callers, role)
        await prepare()
        response = await _send(client, method, template, body, world, callers, caller.headers)
        allowed = role == "admin" or ROLES.index(role) >= ROLES.index(least)
        if allowed:
            assert response.status_code < 300, (role, response.text)
        else:
            assert_problem(response, 403)


async def test_a_team_s_creator_becomes_its_owner_and_sees_only_its_teams(
    client: httpx.AsyncClient, callers: Callers, world: World
):
    created = await client.post(
        "/api/v1/teams", json={"name": "lonely"}, headers=callers.loner.headers
    )
    assert created.status_code == 201
    team_id = created.json()["id"]
    members = await client.get(f"/api/v1/teams/{team_id}/members", headers=callers.loner.headers)
    assert [(m["user_id"], m["role"]) for m in members.json()["items"]] == [
        (callers.loner.id, "owner")
    ]
    mine = await client.get("/api/v1/teams", headers=callers.loner.headers)
    assert [team["id"] for team in mine.json()["items"]] == [team_id]
    every = await client.get("/api/v1/teams")
    assert {team_id, world.team_id} <= {team["id"] for team in every.json()["items"]}


async def test_users_and_workers_are_an_admin_s_and_a_user_finds_another_by_name(
    client: httpx.AsyncClient, callers: Callers
):
    member = callers.member.headers
    assert_problem(
        await client.post("/api/v1/users", json={"username": "eve"}, headers=member), 403
    )
    assert_problem(await client.get(f"/api/v1/users/{callers.loner.id}", headers=member), 403)
    assert_problem(await client.get("/api/v1/workers", headers=member), 403)
    found = await client.get("/api/v1/users", params={"username": "user-loner"}, headers=member)
    assert found.json()["id"] == callers.loner.id
    assert_problem(
        await client.get("/api/v1/users", params={"username": "nobody"}, headers=member), 404
    )


async def test_a_token_is_shown_once_works_and_stops_working_when_revoked(
    client: httpx.AsyncClient, callers: Callers
):
    created = await client.post(
        "/api/v1/user/tokens",
        json={"name": "laptop", "expires_in_days": 30},
        headers=callers.member.headers,
    )
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("dnb_u_")
    me = await client.get("/api/v1/user", headers=bearer(token))
    assert me.json() == {
        "id": callers.member.id,
        "username": "user-member",
        "display_name": "user-member",
        "is_admin": False,
    }
    listed = await client.get("/api/v1/user/tokens", headers=bearer(token))
    assert "laptop" in [row["name"] for row in listed.json()]
    assert token not in listed.text
    other = await client.delete(
        f"/api/v1/user/tokens/{created.json()['id']}", headers=callers.loner.headers
    )
    assert_problem(other, 404)
    revoked = await client.delete(
        f"/api/v1/user/tokens/{created.json()['id']}", headers=bearer(token)
    )
    assert revoked.status_code == 204
    assert_problem(await client.get("/api/v1/user", headers=bearer(token)), 401)


async def test_a_worker_made_by_an_admin_calls_as_a_worker_until_revoked(
    client: httpx.AsyncClient,
):
    created = await client.post("/api/v1/workers", json={"name": "runner-7"})
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("dnb_w_")
    me = await client.get("/api/v1/user", headers=bearer(token))
    assert me.json() == {"id": created.json()["id"], "name": "runner-7", "kind": "worker"}
    listed = await client.get("/api/v1/workers")
    assert token not in listed.text
    assert (await client.delete(f"/api/v1/workers/{created.json()['id']}")).status_code == 204
    assert_problem(await client.get("/api/v1/user", headers=bearer(token)), 401)


async def test_a_tokens_lifetime_must_be_a_whole_number_of_days(client: httpx.AsyncClient):
    """`expires_in_days` is an integer from 1 to 3650: JSON's true, a numeric string or a
    fraction is a 422 naming the field, and no token is made."""
    for days in (True, "30", 0, 3651, 2.5):
        refused = await client.post(
            "/api/v1/user/tokens", json={"name": "laptop", "expires_in_days": days}
        )
        body = assert_problem(refused, 422)
        assert body["errors"][0]["field"] == "expires_in_days"
    listed = await client.get("/api/v1/user/tokens")
    assert "laptop" not in [row["name"] for row in listed.json()]
