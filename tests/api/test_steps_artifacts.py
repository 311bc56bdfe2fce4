"""Steps change while their job runs, reported by the job's worker; artifact records
belong to a job (the worker records them, a member lists them)."""

from __future__ import annotations

import httpx
import pytest

from danube_shared.db.engine import Database
from tests.api.callers import make_admin
from tests.api.conftest import World, assert_problem
from tests.api.worker_world import RunningJob, running_job

SHA = "ab" * 32


@pytest.fixture
async def job(client: httpx.AsyncClient, database: Database) -> RunningJob:
    return await running_job(client, database)


async def test_a_step_of_a_running_job_goes_running_then_final_with_its_exit_code(
    client: httpx.AsyncClient, job: RunningJob
):
    url = f"{job.url}/steps/1"
    headers = job.worker.headers
    running = await client.patch(url, json={"status": "running"}, headers=headers)
    assert running.status_code == 200, running.text
    assert running.json()["status"] == "running"
    assert running.json()["started_at"] is not None
    assert running.json()["timeout_s"] == 3600
    failed = await client.patch(url, json={"status": "failed", "exit_code": 2}, headers=headers)
    assert failed.json()["status"] == "failed"
    assert failed.json()["exit_code"] == 2
    assert failed.json()["finished_at"] is not None
    read = (await client.get(job.url, headers=job.admin)).json()
    assert [step["status"] for step in read["steps"]] == ["pending", "failed"]


async def test_a_step_of_a_pending_job_cannot_change(
    client: httpx.AsyncClient, world: World, database: Database, job: RunningJob
):
    admin = await make_admin(database, "other-admin")
    pending = await client.post(f"/api/v1/pipelines/{world.pipeline_id}/jobs", headers=admin)
    # Not this worker's job (nobody's yet): it does not exist as far as the worker knows.
    response = await client.patch(
        f"/api/v1/jobs/{pending.json()['id']}/steps/0",
        json={"status": "running"},
        headers=job.worker.headers,
    )
    assert_problem(response, 404)


async def test_a_finished_step_cannot_change_again(client: httpx.AsyncClient, job: RunningJob):
    url = f"{job.url}/steps/0"
    headers = job.worker.headers
    await client.patch(url, json={"status": "succeeded", "exit_code": 0}, headers=headers)
    assert_problem(await client.patch(url, json={"status": "running"}, headers=headers), 409)


async def test_a_running_step_can_be_neither_started_again_nor_skipped(
    client: httpx.AsyncClient, job: RunningJob
):
    url = f"{job.url}/steps/0"
    headers = job.worker.headers
    await client.patch(url, json={"status": "running"}, headers=headers)
    for body in ({"status": "running"}, {"status": "skipped"}):
        problem = assert_problem(await client.patch(url, json=body, headers=headers), 409)
        assert "step 0" in problem["detail"]
        assert "is running" in problem["detail"]
    read = (await client.get(job.url, headers=job.admin)).json()
    assert read["steps"][0]["status"] == "running"


async def test_a_step_that_never_started_may_end_or_be_skipped(
    client: httpx.AsyncClient, job: RunningJob
):
    headers = job.worker.headers
    ended = await client.patch(
        f"{job.url}/steps/0", json={"status": "cancelled", "exit_code": 143}, headers=headers
    )
    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["exit_code"]) == ("cancelled", 143)
    assert ended.json()["started_at"] is None
    assert ended.json()["finished_at"] is not None
    skipped = await client.patch(f"{job.url}/steps/1", json={"status": "skipped"}, headers=headers)
    assert skipped.status_code == 200, skipped.text
    assert (skipped.json()["status"], skipped.json()["exit_code"]) == ("skipped", None)


async def test_an_unknown_step_position_is_a_404(client: httpx.AsyncClient, job: RunningJob):
    response = await client.patch(
        f"{job.url}/steps/2", json={"status": "running"}, headers=job.worker.headers
    )
    assert_problem(response, 404)


async def test_a_negative_or_non_integer_position_is_a_422(
    client: httpx.AsyncClient, job: RunningJob
):
    for position in ("-1", "first", "1.5"):
        response = await client.patch(
            f"{job.url}/steps/{position}", json={"status": "running"}, headers=job.worker.headers
        )
        assert assert_problem(response, 422)["errors"][0]["field"] == "path parameter position"


@pytest.mark.parametrize("exit_code", [True, "2"])
async def test_an_exit_code_that_is_not_an_integer_is_a_422(
    client: httpx.AsyncClient, job: RunningJob, exit_code: object
):
    """JSON's true or a numeric string is not an exit code (the step stays as it was),
    though pydantic's lax mode would take either."""
    url = f"{job.url}/steps/0"
    body = {"status": "failed", "exit_code": exit_code}
    assert_problem(await client.patch(url, json=body, headers=job.worker.headers), 422)
    shown = await client.get(job.url, headers=job.admin)
    assert shown.json()["steps"][0]["status"] == "pending"


@pytest.mark.parametrize("status", ["running", "skipped"])
async def test_an_exit_code_with_a_non_final_status_is_a_422(
    client: httpx.AsyncClient, job: RunningJob, status: str
):
    response = await client.patch(
        f"{job.url}/steps/0", json={"status": status, "exit_code": 0}, headers=job.worker.headers
    )
    assert_problem(response, 422)


async def test_the_schema_allows_an_exit_code_only_with_a_final_status(
    client: httpx.AsyncClient,
):
    document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/api/v1/jobs/{job_id}/steps/{position}"]["patch"]["requestBody"]
    variants = body["content"]["application/json"]["schema"]["oneOf"]
    schemas = document["components"]["schemas"]
    resolved = [schemas[variant["$ref"].rsplit("/", 1)[-1]] for variant in variants]
    with_exit_code = [v for v in resolved if "exit_code" in v["properties"]]
    assert [v["properties"]["status"]["enum"] for v in with_exit_code] == [
        ["succeeded", "failed", "cancelled"]
    ]
    assert all(v.get("additionalProperties") is False for v in resolved)


async def test_an_artifact_record_is_created_and_listed(client: httpx.AsyncClient, job: RunningJob):
    url = f"{job.url}/artifacts"
    body = {"name": "app.tar.gz", "size_bytes": 1234, "sha256": SHA.upper(), "uri": "s3://b/app"}
    created = await client.post(url, json=body, headers=job.worker.headers)
    assert created.status_code == 201, created.text
    assert created.json()["sha256"] == SHA
    assert created.json()["job_id"] == job.claimed.id
    listed = (await client.get(url, headers=job.admin)).json()
    assert listed["items"] == [created.json()]
    assert listed["next_offset"] is None


async def test_a_duplicate_artifact_name_in_a_job_is_a_409(
    client: httpx.AsyncClient, job: RunningJob
):
    url = f"{job.url}/artifacts"
    body = {"name": "log", "size_bytes": 1, "sha256": SHA, "uri": "file:///log"}
    await client.post(url, json=body, headers=job.worker.headers)
    assert_problem(await client.post(url, json=body, headers=job.worker.headers), 409)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "xyz"),
        ("size_bytes", -1),
        ("name", ""),
        ("uri", ""),
        ("size_bytes", "big"),
        # What pydantic's lax mode would take for an integer.
        ("size_bytes", True),
        ("size_bytes", "1"),
    ],
)
async def test_an_invalid_artifact_field_is_a_422_naming_it(
    client: httpx.AsyncClient, job: RunningJob, field: str, value: object
):
    body: dict[str, object] = {"name": "log", "size_bytes": 1, "sha256": SHA, "uri": "file:///log"}
    body[field] = value
    response = await client.post(f"{job.url}/artifacts", json=body, headers=job.worker.headers)
    assert assert_problem(response, 422)["errors"][0]["field"] == field


async def test_artifacts_of_an_unknown_job_are_404(client: httpx.AsyncClient, job: RunningJob):
    body = {"name": "log", "size_bytes": 1, "sha256": SHA, "uri": "file:///log"}
    assert_problem(
        await client.post("/api/v1/jobs/ghost/artifacts", json=body, headers=job.worker.headers),
        404,
    )
    assert_problem(await client.get("/api/v1/jobs/ghost/artifacts", headers=job.admin), 404)


async def test_a_jobs_artifacts_are_listed_oldest_first_in_pages(
    client: httpx.AsyncClient, job: RunningJob
):
    url = f"{job.url}/artifacts"
    for name in ("one", "two", "three"):
        body = {"name": name, "size_bytes": 1, "sha256": SHA, "uri": f"s3://b/{name}"}
        assert (await client.post(url, json=body, headers=job.worker.headers)).status_code == 201
    first = (await client.get(url, params={"limit": 2}, headers=job.admin)).json()
    assert [a["name"] for a in first["items"]] == ["one", "two"]
    assert first["next_offset"] == 2
    second = (await client.get(url, params={"limit": 2, "offset": 2}, headers=job.admin)).json()
    assert [a["name"] for a in second["items"]] == ["three"]
    assert second["next_offset"] is None
