"""Steps change while their job runs; artifact records belong to a job."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import World, assert_problem, new_job

SHA = "ab" * 32


@pytest.fixture
async def running_job(client: httpx.AsyncClient, world: World) -> dict[str, Any]:
    job = await new_job(client, world.pipeline_id)
    started = await client.post(f"/api/v1/jobs/{job['id']}/start")
    assert started.status_code == 200
    return job


async def test_a_step_of_a_running_job_goes_running_then_final_with_its_exit_code(
    client: httpx.AsyncClient, running_job: dict[str, Any]
):
    url = f"/api/v1/jobs/{running_job['id']}/steps/1"
    running = await client.patch(url, json={"status": "running"})
    assert running.status_code == 200
    assert running.json()["status"] == "running"
    assert running.json()["started_at"] is not None
    failed = await client.patch(url, json={"status": "failed", "exit_code": 2})
    assert failed.json()["status"] == "failed"
    assert failed.json()["exit_code"] == 2
    assert failed.json()["finished_at"] is not None
    job = (await client.get(f"/api/v1/jobs/{running_job['id']}")).json()
    assert [step["status"] for step in job["steps"]] == ["pending", "failed"]


async def test_a_step_of_a_pending_job_cannot_change(client: httpx.AsyncClient, world: World):
    job = await new_job(client, world.pipeline_id)
    response = await client.patch(f"/api/v1/jobs/{job['id']}/steps/0", json={"status": "running"})
    assert_problem(response, 409)


async def test_a_finished_step_cannot_change_again(
    client: httpx.AsyncClient, running_job: dict[str, Any]
):
    url = f"/api/v1/jobs/{running_job['id']}/steps/0"
    await client.patch(url, json={"status": "succeeded", "exit_code": 0})
    assert_problem(await client.patch(url, json={"status": "running"}), 409)


async def test_an_unknown_step_position_or_job_is_a_404(
    client: httpx.AsyncClient, running_job: dict[str, Any]
):
    assert_problem(
        await client.patch(f"/api/v1/jobs/{running_job['id']}/steps/2", json={"status": "running"}),
        404,
    )
    assert_problem(
        await client.patch("/api/v1/jobs/ghost/steps/0", json={"status": "running"}), 404
    )


async def test_a_negative_or_non_integer_position_is_a_422(
    client: httpx.AsyncClient, running_job: dict[str, Any]
):
    for position in ("-1", "first", "1.5"):
        response = await client.patch(
            f"/api/v1/jobs/{running_job['id']}/steps/{position}", json={"status": "running"}
        )
        assert assert_problem(response, 422)["errors"][0]["field"] == "path parameter position"


async def test_an_exit_code_with_a_non_final_status_is_a_422(
    client: httpx.AsyncClient, running_job: dict[str, Any]
):
    response = await client.patch(
        f"/api/v1/jobs/{running_job['id']}/steps/0", json={"status": "running", "exit_code": 0}
    )
    assert_problem(response, 422)


async def test_an_artifact_record_is_created_and_listed(
    client: httpx.AsyncClient, running_job: dict[str, Any]
):
    url = f"/api/v1/jobs/{running_job['id']}/artifacts"
    body = {"name": "app.tar.gz", "size_bytes": 1234, "sha256": SHA.upper(), "uri": "s3://b/app"}
    created = await client.post(url, json=body)
    assert created.status_code == 201
    assert created.json()["sha256"] == SHA
    assert created.json()["job_id"] == running_job["id"]
    listed = (await client.get(url)).json()
    assert listed["items"] == [created.json()]
    assert listed["next_offset"] is None


async def test_a_duplicate_artifact_name_in_a_job_is_a_409(
    client: httpx.AsyncClient, running_job: dict[str, Any]
):
    url = f"/api/v1/jobs/{running_job['id']}/artifacts"
    body = {"name": "log", "size_bytes": 1, "sha256": SHA, "uri": "file:///log"}
    await client.post(url, json=body)
    assert_problem(await client.post(url, json=body), 409)


@pytest.mark.parametrize(
    ("field", "value"),
    [("sha256", "xyz"), ("size_bytes", -1), ("name", ""), ("uri", ""), ("size_bytes", "big")],
)
async def test_an_invalid_artifact_field_is_a_422_naming_it(
    client: httpx.AsyncClient, running_job: dict[str, Any], field: str, value: object
):
    body: dict[str, object] = {"name": "log", "size_bytes": 1, "sha256": SHA, "uri": "file:///log"}
    body[field] = value
    response = await client.post(f"/api/v1/jobs/{running_job['id']}/artifacts", json=body)
    assert assert_problem(response, 422)["errors"][0]["field"] == field


async def test_artifacts_of_an_unknown_job_are_404(client: httpx.AsyncClient):
    body = {"name": "log", "size_bytes": 1, "sha256": SHA, "uri": "file:///log"}
    assert_problem(await client.post("/api/v1/jobs/ghost/artifacts", json=body), 404)
    assert_problem(await client.get("/api/v1/jobs/ghost/artifacts"), 404)


async def test_a_jobs_artifacts_are_listed_oldest_first_in_pages(
    client: httpx.AsyncClient, running_job: dict[str, Any]
):
    url = f"/api/v1/jobs/{running_job['id']}/artifacts"
    for name in ("one", "two", "three"):
        body = {"name": name, "size_bytes": 1, "sha256": SHA, "uri": f"s3://b/{name}"}
        assert (await client.post(url, json=body)).status_code == 201
    first = (await client.get(url, params={"limit": 2})).json()
    assert [a["name"] for a in first["items"]] == ["one", "two"]
    assert first["next_offset"] == 2
    second = (await client.get(url, params={"limit": 2, "offset": 2})).json()
    assert [a["name"] for a in second["items"]] == ["three"]
    assert second["next_offset"] is None
