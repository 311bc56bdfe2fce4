"""What every response shares: problem+json errors, the request id, the summary log line,
the generic 500, the OpenAPI document."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.api.callers import make_admin, make_worker
from tests.api.conftest import PROBLEM, CapturedLogs, World, assert_problem, new_job
from tests.api.served_app import serve, state_of


async def test_an_unknown_route_is_a_404_problem(client: httpx.AsyncClient):
    body = assert_problem(await client.get("/api/v1/nothing-here"), 404)
    assert body["type"].startswith("urn:danube:problem:")


async def test_a_wrong_method_is_a_405_problem(client: httpx.AsyncClient):
    assert_problem(await client.delete("/api/v1/teams"), 405)


async def test_malformed_json_is_a_422_problem_saying_so(client: httpx.AsyncClient):
    response = await client.post(
        "/api/v1/teams", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert "JSON decode error" in body["detail"]


async def test_a_missing_body_is_a_422_problem(client: httpx.AsyncClient):
    body = assert_problem(await client.post("/api/v1/teams"), 422)
    assert body["errors"][0]["field"] == "body"


async def test_a_body_over_the_size_limit_is_a_413_problem(client: httpx.AsyncClient, world: World):
    response = await client.put(
        f"/api/v1/teams/{world.team_id}/secrets/BIG", json={"value": "x" * (3 * 1024 * 1024)}
    )
    assert_problem(response, 413)


async def test_a_generated_request_id_is_echoed_in_the_response(client: httpx.AsyncClient):
    first = await client.get("/healthz")
    second = await client.get("/healthz")
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_plain_incoming_request_id_is_kept_and_a_bad_one_replaced(
    client: httpx.AsyncClient,
):
    kept = await client.get("/healthz", headers={"X-Request-ID": "abc-123.x:y_z"})
    assert kept.headers["x-request-id"] == "abc-123.x:y_z"
    for bad in (b"has space", b"x" * 65, b"-leading", "ünï".encode(), b""):
        replaced = await client.get("/healthz", headers={b"X-Request-ID": bad})
        assert replaced.headers["x-request-id"].encode() != bad
        assert len(replaced.headers["x-request-id"]) == 32


async def test_each_request_logs_one_summary_line_with_the_path_template(
    client: httpx.AsyncClient, world: World, captured_logs: CapturedLogs
):
    job = await new_job(client, world.pipeline_id)
    response = await client.get(f"/api/v1/jobs/{job['id']}", headers={"X-Request-ID": "req-42"})
    (line,) = [line for line in captured_logs.requests() if line["request_id"] == "req-42"]
    assert line["method"] == "GET"
    assert line["path"] == "/api/v1/jobs/{job_id}"
    assert line["status"] == response.status_code == 200
    assert line["duration_ms"] >= 0
    assert line["level"] == "info"
    assert line["process"] == "danube-api"
    assert len(captured_logs.requests()) == 2  # the job's creation and this GET


async def test_lines_logged_while_handling_a_request_carry_its_request_id(
    client: httpx.AsyncClient, world: World, captured_logs: CapturedLogs
):
    database = state_of(client)["database"]
    admin = await make_admin(database)
    worker = await make_worker(database)
    created = await client.post(f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin)
    await client.post("/api/v1/worker/claim", headers={**worker.headers, "X-Request-ID": "claim-1"})
    (claimed,) = [line for line in captured_logs.lines() if line["message"] == "job claimed"]
    assert claimed["request_id"] == "claim-1"
    assert claimed["job_id"] == created.json()["id"]


async def test_an_unexpected_exception_is_a_generic_500_logged_with_the_request_id(
    app: FastAPI, captured_logs: CapturedLogs
):
    async def explode() -> None:
        raise RuntimeError("internal detail that must stay inside")

    app.add_api_route("/explode", explode)
    async with serve(app) as client:
        response = await client.get("/explode", headers={"X-Request-ID": "boom-1"})
    body = assert_problem(response, 500)
    assert "internal detail" not in response.text
    assert response.headers["x-request-id"] == "boom-1"
    assert "request id" in body["detail"]
    (error,) = [line for line in captured_logs.lines() if line["message"] == "unhandled error"]
    assert error["request_id"] == "boom-1"
    assert error["level"] == "error"
    assert "exception" in error
    (summary,) = captured_logs.requests()
    assert summary["status"] == 500
    assert summary["path"] == "/explode"


async def test_openapi_documents_every_error_response_as_a_problem(client: httpx.AsyncClient):
    schema = (await client.get("/openapi.json")).json()
    finish = schema["paths"]["/api/v1/jobs/{job_id}/finish"]["post"]["responses"]
    assert {"200", "404", "409", "500", "503"} <= set(finish)
    assert PROBLEM in finish["409"]["content"]
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            errors = [status for status in operation["responses"] if status[0] in "45"]
            assert "500" in errors, (method, path)
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in errors or path.endswith("}/jobs") or "{" in path, (method, path)
            for status in errors:
                assert list(operation["responses"][status]["content"]) == [PROBLEM]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
