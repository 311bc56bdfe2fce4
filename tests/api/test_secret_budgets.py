"""A team or a pipeline holds at most 1,000 secrets and 4 MiB of values (DESIGN 7):
one more is a 422 and nothing of it is stored; replacing a secret is within budget."""

from __future__ import annotations

import asyncio

import httpx

from danube_api.schemas import SECRET_VALUE_MAX_BYTES
from danube_api.secret_service import MAX_SECRET_BYTES, MAX_SECRETS
from tests.api.conftest import World, assert_problem


async def _put_many(client: httpx.AsyncClient, base: str, names: list[str], value: str) -> None:
    for start in range(0, len(names), 50):
        answers = await asyncio.gather(
            *(
                client.put(f"{base}/{name}", json={"value": value})
                for name in names[start : start + 50]
            )
        )
        assert [answer.status_code for answer in answers] == [201] * len(answers)


async def _count(client: httpx.AsyncClient, base: str) -> int:
    total, offset = 0, 0
    while True:
        page = (await client.get(base, params={"limit": 200, "offset": offset})).json()
        total += len(page["items"])
        if page["next_offset"] is None:
            return total
        offset = page["next_offset"]


async def test_the_secret_past_the_1000th_of_a_team_is_refused(
    client: httpx.AsyncClient, world: World
):
    base = f"/api/v1/teams/{world.team_id}/secrets"
    await _put_many(client, base, [f"S{index}" for index in range(MAX_SECRETS)], "v")
    assert_problem(await client.put(f"{base}/ONE_MORE", json={"value": "v"}), 422)
    replaced = await client.put(f"{base}/S0", json={"value": "new"})
    assert replaced.status_code == 200
    assert await _count(client, base) == MAX_SECRETS


async def test_values_past_4_mib_of_a_pipeline_are_refused(client: httpx.AsyncClient, world: World):
    base = f"/api/v1/pipelines/{world.pipeline_id}/secrets"
    value = "x" * SECRET_VALUE_MAX_BYTES
    fits = MAX_SECRET_BYTES // SECRET_VALUE_MAX_BYTES
    await _put_many(client, base, [f"BIG{index}" for index in range(fits)], value)
    body = assert_problem(await client.put(f"{base}/ONE_BYTE", json={"value": "x"}), 422)
    assert str(MAX_SECRET_BYTES) in body["detail"]
    # A replacement the same size fits; the team's own budget is separate.
    assert (await client.put(f"{base}/BIG0", json={"value": value})).status_code == 200
    team = await client.put(f"/api/v1/teams/{world.team_id}/secrets/ONE", json={"value": "x"})
    assert team.status_code == 201
    assert await _count(client, base) == fits
