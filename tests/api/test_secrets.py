"""Write-only secrets: encrypted by keyd, bound to their row, never shown again."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from danube_api.schemas import SecretPut
from danube_shared.db.engine import Database
from danube_shared.db.schema import Secret
from tests.api.conftest import World, assert_problem
from tests.api.fake_keyd import FakeKeyd

VALUE = "hunter2-correct-horse"


@pytest.fixture(params=["team", "pipeline"])
def scope_url(request: pytest.FixtureRequest, world: World) -> str:
    if request.param == "team":
        return f"/api/v1/teams/{world.team_id}/secrets"
    return f"/api/v1/pipelines/{world.pipeline_id}/secrets"


async def stored_secrets(database: Database) -> list[Secret]:
    return await database.read(lambda session: list(session.scalars(select(Secret)).all()))


async def test_putting_a_new_secret_answers_201_with_metadata_and_no_value(
    client: httpx.AsyncClient, scope_url: str
):
    response = await client.put(f"{scope_url}/DEPLOY_TOKEN", json={"value": VALUE})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "name", "scope", "scope_id", "created_at", "updated_at"}
    assert body["name"] == "DEPLOY_TOKEN"
    assert VALUE not in response.text


async def test_replacing_a_secret_answers_200_and_keeps_its_id(
    client: httpx.AsyncClient, scope_url: str
):
    first = (await client.put(f"{scope_url}/DEPLOY_TOKEN", json={"value": "one"})).json()
    second = await client.put(f"{scope_url}/DEPLOY_TOKEN", json={"value": "two"})
    assert second.status_code == 200
    assert second.json()["id"] == first["id"]
    assert second.json()["created_at"] == first["created_at"]
    assert second.json()["updated_at"] >= first["updated_at"]


async def test_the_stored_ciphertext_opens_only_under_its_own_row_s_context(
    client: httpx.AsyncClient, scope_url: str, database: Database, fake_keyd: FakeKeyd
):
    await client.put(f"{scope_url}/A", json={"value": "value-a"})
    await client.put(f"{scope_url}/B", json={"value": "value-b"})
    await client.put(f"{scope_url}/A", json={"value": "value-a2"})
    rows = {row.name: row for row in await stored_secrets(database)}
    assert fake_keyd.open(rows["A"].ciphertext, f"secret:{rows['A'].id}") == b"value-a2"
    assert rows["A"].key_id == fake_keyd.key_id
    assert b"value-a" not in rows["A"].ciphertext
    with pytest.raises(Exception, match="decrypt_failed"):
        fake_keyd.open(rows["A"].ciphertext, f"secret:{rows['B'].id}")


async def test_listing_secrets_gives_names_and_times_by_name(
    client: httpx.AsyncClient, scope_url: str
):
    for name in ("ZED", "ALPHA"):
        await client.put(f"{scope_url}/{name}", json={"value": VALUE})
    listed = await client.get(scope_url)
    assert listed.status_code == 200
    assert [item["name"] for item in listed.json()["items"]] == ["ALPHA", "ZED"]
    assert VALUE not in listed.text
    assert "ciphertext" not in listed.text


async def test_keyd_unavailable_on_put_is_a_503_and_nothing_is_written(
    client: httpx.AsyncClient, scope_url: str, fake_keyd: FakeKeyd, database: Database
):
    fake_keyd.available = False
    body = assert_problem(await client.put(f"{scope_url}/NAME", json={"value": VALUE}), 503)
    assert "keyd" in body["detail"]
    assert await stored_secrets(database) == []


async def test_deleting_a_secret_answers_204_then_404(client: httpx.AsyncClient, scope_url: str):
    await client.put(f"{scope_url}/NAME", json={"value": VALUE})
    deleted = await client.delete(f"{scope_url}/NAME")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(await client.delete(f"{scope_url}/NAME"), 404)
    assert (await client.get(scope_url)).json()["items"] == []


async def test_secrets_of_an_unknown_scope_are_404_without_asking_keyd(
    client: httpx.AsyncClient, fake_keyd: FakeKeyd
):
    for url in ("/api/v1/teams/ghost/secrets", "/api/v1/pipelines/ghost/secrets"):
        assert_problem(await client.put(f"{url}/NAME", json={"value": VALUE}), 404)
        assert_problem(await client.get(url), 404)
        assert_problem(await client.delete(f"{url}/NAME"), 404)
    assert "encrypt" not in fake_keyd.calls


@pytest.mark.parametrize("name", ["1LEADING_DIGIT", "HAS-DASH", "has.dot", "A" * 101, "SPACE%20D"])
async def test_a_secret_name_outside_the_env_var_rule_is_a_422(
    client: httpx.AsyncClient, world: World, name: str
):
    response = await client.put(
        f"/api/v1/teams/{world.team_id}/secrets/{name}", json={"value": VALUE}
    )
    assert assert_problem(response, 422)["errors"][0]["field"] == "path parameter name"


async def test_the_longest_allowed_secret_name_is_accepted(client: httpx.AsyncClient, world: World):
    """As long as the stored column (100), so the database never sees a longer one."""
    name = "_" + "A" * 99
    response = await client.put(
        f"/api/v1/teams/{world.team_id}/secrets/{name}", json={"value": VALUE}
    )
    assert response.status_code == 201


async def test_an_empty_value_is_a_422(client: httpx.AsyncClient, world: World):
    response = await client.put(f"/api/v1/teams/{world.team_id}/secrets/N", json={"value": ""})
    body = assert_problem(response, 422)
    assert body["errors"] == [{"field": "value", "message": "Value error, must not be empty"}]


async def test_a_value_over_64_kib_of_utf8_is_a_422_that_does_not_echo_it(
    client: httpx.AsyncClient, world: World
):
    url = f"/api/v1/teams/{world.team_id}/secrets/N"
    # 21846 three-byte characters: 65538 bytes, though only 21846 characters.
    value = "€" * 21846
    response = await client.put(url, json={"value": value})
    body = assert_problem(response, 422)
    assert "65536 bytes" in body["detail"]
    assert "€€" not in response.text
    exactly = "x" * (64 * 1024)
    assert (await client.put(url, json={"value": exactly})).status_code == 201


async def test_a_value_that_is_not_a_string_is_a_422(client: httpx.AsyncClient, world: World):
    url = f"/api/v1/teams/{world.team_id}/secrets/N"
    for value in (123, None, ["x"], {"v": "x"}):
        assert_problem(await client.put(url, json={"value": value}), 422)
    assert_problem(await client.put(url, json={}), 422)


async def test_a_value_with_a_lone_surrogate_is_a_422_not_a_500(
    client: httpx.AsyncClient, world: World
):
    response = await client.put(
        f"/api/v1/teams/{world.team_id}/secrets/N",
        content=b'{"value": "abc\\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 422)


async def test_no_validation_error_echoes_a_rejected_value(client: httpx.AsyncClient, world: World):
    url = f"/api/v1/teams/{world.team_id}/secrets/N"
    response = await client.put(url, json={"value": VALUE, "extra": VALUE})
    assert_problem(response, 422)
    assert VALUE not in response.text


async def test_an_unknown_body_field_is_a_422_that_does_not_echo_its_name(
    client: httpx.AsyncClient, world: World
):
    """A client that put its secret where a key belongs must not get it back."""
    key = "s3cret-pasted-as-a-key-7f3a"
    response = await client.put(
        f"/api/v1/teams/{world.team_id}/secrets/DEPLOY", json={"value": VALUE, key: "x"}
    )
    body = assert_problem(response, 422)
    assert key not in response.text
    assert body["errors"][0]["field"] == "body"
    assert "not allowed" in body["errors"][0]["message"]


def test_the_put_body_never_shows_its_value_when_printed():
    body = SecretPut(value=VALUE)
    assert VALUE not in repr(body)
    assert VALUE not in str(body)
    assert body.value == VALUE


async def test_secrets_are_listed_by_name_in_pages(client: httpx.AsyncClient, scope_url: str):
    for name in ("C", "A", "B"):
        await client.put(f"{scope_url}/{name}", json={"value": "v"})
    first = (await client.get(scope_url, params={"limit": 2})).json()
    assert [secret["name"] for secret in first["items"]] == ["A", "B"]
    assert first["next_offset"] == 2
    second = (await client.get(scope_url, params={"limit": 2, "offset": 2})).json()
    assert [secret["name"] for secret in second["items"]] == ["C"]
    assert second["next_offset"] is None
