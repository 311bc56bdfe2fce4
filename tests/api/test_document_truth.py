"""The OpenAPI document states what the server does, for the conformance failures
schemathesis found: the 405's `Allow` header, the 400 for a body that is not UTF-8, and
the constraint on a secret's value."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.conftest import World, assert_problem


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


async def test_a_405_allows_every_method_the_path_has(client: httpx.AsyncClient, world: World):
    document = await _document(client)
    for path, methods in (
        ("/api/v1/teams", {"GET", "POST"}),
        (f"/api/v1/teams/{world.team_id}/secrets/NAME", {"PUT", "DELETE"}),
    ):
        answer = await client.patch(path)
        assert_problem(answer, 405)
        assert set(answer.headers["allow"].split(", ")) == methods
    declared = {method.upper() for method in document["paths"]["/api/v1/teams"]}
    assert declared == {"GET", "POST"}


async def test_a_body_that_is_not_utf8_is_a_declared_400(client: httpx.AsyncClient):
    answer = await client.post(
        "/api/v1/teams",
        content=b'{"name": "\xff\xfe"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(answer, 400)
    document = await _document(client)
    assert "400" in document["paths"]["/api/v1/teams"]["post"]["responses"]


async def test_the_schema_states_that_a_secret_value_is_not_empty(client: httpx.AsyncClient):
    document = await _document(client)
    assert document["components"]["schemas"]["SecretPut"]["properties"]["value"]["minLength"] == 1
