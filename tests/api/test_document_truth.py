"""The OpenAPI document states what the server does, for the conformance failures
schemathesis found: the 405's `Allow` header, the 400 for a body that is not UTF-8, the
constraints on a secret's body, the 409 of an append to an ended job; and its links lead
from each create to the new object (CI's schemathesis run follows them)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import schemathesis

from danube_api.openapi_links import PRODUCERS
from danube_shared.db.engine import Database
from tests.api.conftest import World, assert_problem
from tests.api.worker_world import running_job


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


def _conforms(document: dict[str, Any], path: str, method: str, answer: httpx.Response) -> None:
    """`answer` has a status the operation declares and a body its schema for that
    status admits, judged by schemathesis (the client CI runs against the live API)."""
    declared = document["paths"][path][method.lower()]["responses"]
    assert str(answer.status_code) in declared, answer.text
    operation = schemathesis.openapi.from_dict(document)[path][method.upper()]
    operation.validate_response(answer)


async def test_a_secret_body_with_another_key_is_refused_as_the_schema_states(
    client: httpx.AsyncClient, world: World
):
    document = await _document(client)
    assert document["components"]["schemas"]["SecretPut"]["additionalProperties"] is False
    answer = await client.put(
        f"/api/v1/teams/{world.team_id}/secrets/TOKEN", json={"value": "v", "other": 1}
    )
    assert_problem(answer, 422)


async def test_an_append_to_an_ended_job_answers_the_409_the_document_declares(
    client: httpx.AsyncClient, database: Database
):
    job = await running_job(client, database)
    finished = await client.post(
        f"{job.url}/finish", json={"status": "failed"}, headers=job.worker.headers
    )
    assert finished.status_code == 200, finished.text
    answer = await client.post(
        f"{job.url}/steps/0/log",
        params={"offset": 0},
        content=b"late",
        headers={**job.worker.headers, "Content-Type": "application/octet-stream"},
    )
    assert "length" not in assert_problem(answer, 409)
    _conforms(await _document(client), "/api/v1/jobs/{job_id}/steps/{position}/log", "post", answer)


def _operations(document: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each operation id's path and method."""
    return {
        operation["operationId"]: (path, method)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def _links(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Each link as (source operation id, status, link)."""
    return [
        (operation["operationId"], status, link)
        for item in document["paths"].values()
        for operation in item.values()
        for status, response in operation["responses"].items()
        for link in response.get("links", {}).values()
    ]


async def test_every_link_names_an_operation_and_only_its_path_parameters(
    client: httpx.AsyncClient,
):
    document = await _document(client)
    operations = _operations(document)
    links = _links(document)
    for source, status, link in links:
        path, _ = operations[link["operationId"]]
        assert set(link["parameters"]) <= set(re.findall(r"{([^}]+)}", path)), (source, link)
        source_path, source_method = operations[source]
        assert status in document["paths"][source_path][source_method]["responses"]
    sources = {source for source, _, _ in links}
    assert set(PRODUCERS) <= sources
    assert {"put_team_secret", "put_pipeline_secret", "put_member"} <= sources


def _resolve(expression: Any, request_path: dict[str, str], body: dict[str, Any]) -> Any:
    """The value of a link parameter: `$response.body#/a/b`, `$request.path.x` or a
    constant."""
    if not isinstance(expression, str):
        return expression
    if expression.startswith("$request.path."):
        return request_path[expression.removeprefix("$request.path.")]
    assert expression.startswith("$response.body#/"), expression
    found: Any = body
    for key in expression.removeprefix("$response.body#/").split("/"):
        found = found[key]
    return found


async def test_the_links_from_each_create_reach_the_new_object(
    client: httpx.AsyncClient, world: World
):
    """Following every link from creates made here to a `GET` finds the object, as a
    client (schemathesis's stateful phase) that follows them would."""
    document = await _document(client)
    operations = _operations(document)
    creates: list[tuple[str, dict[str, str], httpx.Response]] = [
        ("create_team", {}, await client.post("/api/v1/teams", json={"name": "linked"})),
        (
            "create_job",
            {"pipeline_id": world.pipeline_id},
            await client.post(f"/api/v1/pipelines/{world.pipeline_id}/jobs"),
        ),
        (
            "put_team_secret",
            {"team_id": world.team_id, "name": "LINKED"},
            await client.put(f"/api/v1/teams/{world.team_id}/secrets/LINKED", json={"value": "v"}),
        ),
    ]
    followed = 0
    for source, request_path, answer in creates:
        assert answer.status_code == 201, answer.text
        source_path, source_method = operations[source]
        links = document["paths"][source_path][source_method]["responses"]["201"]["links"]
        for link in links.values():
            path, method = operations[link["operationId"]]
            if method != "get":
                continue
            values = {
                name: _resolve(expression, request_path, answer.json())
                for name, expression in link["parameters"].items()
            }
            reached = await client.get(path.format(**values))
            assert reached.status_code == 200, (source, link, reached.text)
            followed += 1
    assert followed >= 6


def _integer_bounds(node: Any) -> list[int]:
    if isinstance(node, dict):
        found = [
            value
            for key, value in node.items()
            if key in ("maximum", "minimum") and isinstance(value, int)
        ]
        return found + [bound for value in node.values() for bound in _integer_bounds(value)]
    if isinstance(node, list):
        return [bound for value in node for bound in _integer_bounds(value)]
    return []


async def test_every_integer_bound_is_one_a_json_client_reads_exactly(
    client: httpx.AsyncClient, database: Database
):
    """A bound past 2**53 (2**63 - 1 for an artifact's size) reads as a double rounded
    past it, so a client sending "the maximum" was refused."""
    document = await _document(client)
    bounds = _integer_bounds(document)
    assert bounds
    assert all(int(float(bound)) == bound for bound in bounds)
    job = await running_job(client, database)
    largest = document["components"]["schemas"]["ArtifactCreate"]["properties"]["size_bytes"]
    answer = await client.post(
        f"{job.url}/artifacts",
        json={"name": "big", "size_bytes": largest["maximum"], "sha256": "ab" * 32, "uri": "u"},
        headers=job.worker.headers,
    )
    assert answer.status_code == 201, answer.text
