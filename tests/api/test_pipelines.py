"""Pipelines: a team's ordered step definitions."""

from __future__ import annotations

import httpx

from tests.api.conftest import World, assert_problem


def steps(count: int) -> list[dict[str, str]]:
    return [{"name": f"step-{index}", "command": f"echo {index}"} for index in range(count)]


async def test_creating_a_pipeline_answers_201_with_its_steps_in_order(
    client: httpx.AsyncClient, world: World
):
    response = await client.post(
        f"/api/v1/teams/{world.team_id}/pipelines", json={"name": "deploy", "steps": steps(3)}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["team_id"] == world.team_id
    # A step given no timeout gets the default, 3600 s.
    assert body["steps"] == [step | {"timeout_s": 3600} for step in steps(3)]
    assert (await client.get(f"/api/v1/pipelines/{body['id']}")).json() == body


async def test_a_steps_timeout_is_kept_and_must_be_1_to_86400_seconds(
    client: httpx.AsyncClient, world: World
):
    url = f"/api/v1/teams/{world.team_id}/pipelines"
    for timeout_s in (0, 86_401):
        step = {"name": "s", "command": "true", "timeout_s": timeout_s}
        body = assert_problem(await client.post(url, json={"name": "p", "steps": [step]}), 422)
        assert body["errors"][0]["field"] == "steps[0].timeout_s"
    # Not a number of seconds, though pydantic's lax mode would take each.
    for timeout_s in (True, "60"):
        step = {"name": "s", "command": "true", "timeout_s": timeout_s}
        body = assert_problem(await client.post(url, json={"name": "p", "steps": [step]}), 422)
        assert body["errors"][0]["field"] == "steps[0].timeout_s"
    step = {"name": "s", "command": "true", "timeout_s": 86_400}
    created = await client.post(url, json={"name": "p", "steps": [step]})
    assert created.status_code == 201, created.text
    assert created.json()["steps"] == [step]


async def test_a_pipeline_needs_1_to_100_steps(client: httpx.AsyncClient, world: World):
    url = f"/api/v1/teams/{world.team_id}/pipelines"
    for count in (0, 101):
        body = assert_problem(
            await client.post(url, json={"name": "p", "steps": steps(count)}), 422
        )
        assert body["errors"][0]["field"] == "steps"
    assert (await client.post(url, json={"name": "p", "steps": steps(100)})).status_code == 201


async def test_a_step_name_or_command_outside_its_length_is_a_422_naming_the_step(
    client: httpx.AsyncClient, world: World
):
    url = f"/api/v1/teams/{world.team_id}/pipelines"
    too_long = [{"name": "ok", "command": "x"}, {"name": "n" * 101, "command": "x"}]
    body = assert_problem(await client.post(url, json={"name": "p", "steps": too_long}), 422)
    assert body["errors"][0]["field"] == "steps[1].name"
    empty_command = [{"name": "ok", "command": ""}]
    body = assert_problem(await client.post(url, json={"name": "p", "steps": empty_command}), 422)
    assert body["errors"][0]["field"] == "steps[0].command"
    long_command = [{"name": "ok", "command": "c" * 10_001}]
    assert_problem(await client.post(url, json={"name": "p", "steps": long_command}), 422)


async def test_a_pipeline_of_an_unknown_team_is_a_404_problem(client: httpx.AsyncClient):
    response = await client.post(
        "/api/v1/teams/ghost/pipelines", json={"name": "p", "steps": steps(1)}
    )
    assert_problem(response, 404)


async def test_a_duplicate_pipeline_name_in_a_team_is_a_409_problem(
    client: httpx.AsyncClient, world: World
):
    response = await client.post(
        f"/api/v1/teams/{world.team_id}/pipelines", json={"name": "build-a", "steps": steps(1)}
    )
    assert_problem(response, 409)


async def test_a_team_s_pipelines_are_listed_by_name(client: httpx.AsyncClient, world: World):
    url = f"/api/v1/teams/{world.team_id}/pipelines"
    await client.post(url, json={"name": "aaa", "steps": steps(1)})
    listed = (await client.get(url)).json()
    assert [pipeline["name"] for pipeline in listed["items"]] == ["aaa", "build-a"]
    assert listed["next_offset"] is None
    assert_problem(await client.get("/api/v1/teams/ghost/pipelines"), 404)


async def test_an_unknown_pipeline_id_is_a_404_problem(client: httpx.AsyncClient):
    assert_problem(await client.get("/api/v1/pipelines/ghost"), 404)


async def test_unknown_fields_in_a_body_are_a_422_naming_them(
    client: httpx.AsyncClient, world: World
):
    response = await client.post(
        f"/api/v1/teams/{world.team_id}/pipelines",
        json={"name": "p", "steps": steps(1), "stesp": []},
    )
    assert assert_problem(response, 422)["errors"][0]["field"] == "stesp"
