"""The team access answers are cached for a few seconds (team_roles.py), yet a
membership change made on this node decides the very next request."""

from __future__ import annotations

import httpx

from danube_api.team_roles import TeamRoleCache
from danube_shared.db.schema import TeamRole
from tests.api.conftest import Callers, World, assert_problem, bearer


async def test_a_member_removed_on_this_node_is_refused_at_its_next_request(
    client: httpx.AsyncClient, world: World, callers: Callers
) -> None:
    jobs = f"/api/v1/pipelines/{world.pipeline_id}/jobs"
    member = bearer(callers.member.token)
    assert (await client.get(jobs, headers=member)).status_code == 200  # now cached
    removed = await client.delete(f"/api/v1/teams/{world.team_id}/members/{callers.member.id}")
    assert removed.status_code == 204
    assert_problem(await client.get(jobs, headers=member), 404)


async def test_a_maintainer_demoted_on_this_node_is_refused_at_its_next_request(
    client: httpx.AsyncClient, world: World, callers: Callers
) -> None:
    secret = f"/api/v1/pipelines/{world.pipeline_id}/secrets/TOKEN"
    maintainer = bearer(callers.maintainer.token)
    put = await client.put(secret, json={"value": "v"}, headers=maintainer)
    assert put.status_code in {200, 201, 204}, put.text
    demoted = await client.put(
        f"/api/v1/teams/{world.team_id}/members/{callers.maintainer.id}", json={"role": "member"}
    )
    assert demoted.status_code == 200
    assert_problem(await client.put(secret, json={"value": "w"}, headers=maintainer), 403)


def test_an_answer_past_its_time_is_not_served() -> None:
    cache = TeamRoleCache(ttl_s=0)
    cache.put("team_id", "t1", "u1", ("t1", TeamRole.OWNER))
    assert cache.get("team_id", "t1", "u1") is None


def test_forgetting_a_team_drops_only_that_team_s_answers() -> None:
    cache = TeamRoleCache()
    cache.put("pipeline_id", "p1", "u1", ("t1", TeamRole.MEMBER))
    cache.put("pipeline_id", "p2", "u1", ("t2", TeamRole.MEMBER))
    cache.forget_team("t1")
    assert cache.get("pipeline_id", "p1", "u1") is None
    assert cache.get("pipeline_id", "p2", "u1") == ("t2", TeamRole.MEMBER)
