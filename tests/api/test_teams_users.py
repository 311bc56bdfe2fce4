"""Teams, users and membership through the API."""

from __future__ import annotations

import httpx

from tests.api.conftest import ApiCaller, assert_problem


async def test_creating_a_team_answers_201_with_the_team(client: httpx.AsyncClient):
    response = await client.post("/api/v1/teams", json={"name": "platform"})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "name", "created_at"}
    assert body["name"] == "platform"
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")


async def test_a_created_team_can_be_fetched_by_id(client: httpx.AsyncClient):
    created = (await client.post("/api/v1/teams", json={"name": "platform"})).json()
    fetched = await client.get(f"/api/v1/teams/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created


async def test_a_duplicate_team_name_is_a_409_problem(client: httpx.AsyncClient):
    await client.post("/api/v1/teams", json={"name": "platform"})
    body = assert_problem(await client.post("/api/v1/teams", json={"name": "platform"}), 409)
    assert "platform" in body["detail"]


async def test_an_unknown_team_id_is_a_404_problem(client: httpx.AsyncClient):
    assert_problem(await client.get("/api/v1/teams/no-such-team"), 404)


async def test_a_team_name_outside_the_rule_is_a_422_naming_the_field(client: httpx.AsyncClient):
    for bad in ("", "Upper", "-leading-dash", "a" * 64, "spa ce", "üml"):
        body = assert_problem(await client.post("/api/v1/teams", json={"name": bad}), 422)
        assert body["detail"].startswith("name: "), body
        assert body["errors"][0]["field"] == "name"


async def test_teams_are_listed_by_name_in_pages(client: httpx.AsyncClient):
    for name in ("c-team", "a-team", "b-team"):
        await client.post("/api/v1/teams", json={"name": name})
    first = (await client.get("/api/v1/teams", params={"limit": 2})).json()
    assert [team["name"] for team in first["items"]] == ["a-team", "b-team"]
    assert first["next_offset"] == 2
    second = (await client.get("/api/v1/teams", params={"limit": 2, "offset": 2})).json()
    assert [team["name"] for team in second["items"]] == ["c-team"]
    assert second["next_offset"] is None


async def test_a_page_limit_outside_1_to_200_is_a_422_naming_the_parameter(
    client: httpx.AsyncClient,
):
    for limit in (0, 201, -1):
        body = assert_problem(await client.get("/api/v1/teams", params={"limit": limit}), 422)
        assert body["errors"][0]["field"] == "query parameter limit"


async def test_creating_a_user_answers_201_and_defaults_the_display_name(
    client: httpx.AsyncClient,
):
    response = await client.post("/api/v1/users", json={"username": "ada"})
    assert response.status_code == 201
    assert response.json()["display_name"] == "ada"
    fetched = await client.get(f"/api/v1/users/{response.json()['id']}")
    assert fetched.json() == response.json()


async def test_a_taken_username_is_a_409_problem(client: httpx.AsyncClient):
    await client.post("/api/v1/users", json={"username": "ada", "display_name": "Ada L."})
    assert_problem(await client.post("/api/v1/users", json={"username": "ada"}), 409)


async def test_an_unknown_user_id_is_a_404_problem(client: httpx.AsyncClient):
    assert_problem(await client.get("/api/v1/users/nobody"), 404)


async def test_putting_a_member_answers_201_then_200_when_the_role_changes(
    client: httpx.AsyncClient, admin: ApiCaller
):
    team = (await client.post("/api/v1/teams", json={"name": "platform"})).json()
    user = (await client.post("/api/v1/users", json={"username": "ada"})).json()
    url = f"/api/v1/teams/{team['id']}/members/{user['id']}"
    joined = await client.put(url, json={})
    assert joined.status_code == 201
    assert joined.json()["role"] == "member"
    changed = await client.put(url, json={"role": "owner"})
    assert changed.status_code == 200
    assert changed.json()["role"] == "owner"
    members = (await client.get(f"/api/v1/teams/{team['id']}/members")).json()
    # The team's creator is its first owner.
    assert [(m["user_id"], m["role"]) for m in members["items"]] == [
        (admin.id, "owner"),
        (user["id"], "owner"),
    ]


async def test_membership_of_an_unknown_user_or_team_is_a_404_problem(client: httpx.AsyncClient):
    team = (await client.post("/api/v1/teams", json={"name": "platform"})).json()
    user = (await client.post("/api/v1/users", json={"username": "ada"})).json()
    assert_problem(await client.put(f"/api/v1/teams/{team['id']}/members/ghost", json={}), 404)
    assert_problem(await client.put(f"/api/v1/teams/ghost/members/{user['id']}", json={}), 404)


async def test_an_unknown_role_is_a_422_problem(client: httpx.AsyncClient):
    team = (await client.post("/api/v1/teams", json={"name": "platform"})).json()
    user = (await client.post("/api/v1/users", json={"username": "ada"})).json()
    response = await client.put(
        f"/api/v1/teams/{team['id']}/members/{user['id']}", json={"role": "emperor"}
    )
    assert assert_problem(response, 422)["errors"][0]["field"] == "role"


async def test_a_teams_members_are_listed_in_pages(client: httpx.AsyncClient, admin: ApiCaller):
    team = (await client.post("/api/v1/teams", json={"name": "paged"})).json()
    user_ids: list[str] = [admin.id]  # the creator, the team's first owner
    for name in ("ada", "bob"):
        user = (await client.post("/api/v1/users", json={"username": name})).json()
        await client.put(f"/api/v1/teams/{team['id']}/members/{user['id']}", json={})
        user_ids.append(user["id"])
    url = f"/api/v1/teams/{team['id']}/members"
    first = (await client.get(url, params={"limit": 2})).json()
    assert [m["user_id"] for m in first["items"]] == user_ids[:2]
    assert first["next_offset"] == 2
    second = (await client.get(url, params={"limit": 2, "offset": 2})).json()
    assert [m["user_id"] for m in second["items"]] == user_ids[2:]
    assert second["next_offset"] is None
