"""Creating a job through the API: the pipeline's step definitions are read once per
process and kept (they never change once the pipeline is created), the kept set is
bounded, and what a creation answers is what the database holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from danube_api import job_service
from danube_shared.db.engine import Database
from tests.api.conftest import World, make_world, new_job


def count_step_reads(database: Database, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pipeline-step reads `database` serves from now on, by pipeline id."""
    reads: list[str] = []
    read = database.read

    async def counted(unit: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if unit is job_service._steps_of:
            reads.append(args[0])
        return await read(unit, *args, **kwargs)

    monkeypatch.setattr(database, "read", counted)
    return reads


async def test_a_pipelines_steps_are_read_once_and_every_job_gets_them(
    client: httpx.AsyncClient, database: Database, world: World, monkeypatch: pytest.MonkeyPatch
):
    reads = count_step_reads(database, monkeypatch)
    jobs = [await new_job(client, world.pipeline_id) for _ in range(3)]
    assert reads == [world.pipeline_id]
    assert [job["number"] for job in jobs] == [1, 2, 3]
    for job in jobs:
        assert [(s["position"], s["name"], s["command"]) for s in job["steps"]] == [
            (0, "compile", "make"),
            (1, "test", "make check"),
        ]
        stored = await client.get(f"/api/v1/jobs/{job['id']}")
        assert stored.json() == job


async def test_past_the_bound_the_oldest_pipeline_is_forgotten(
    client: httpx.AsyncClient, database: Database, world: World, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(job_service, "MAX_KEPT_PIPELINES", 1)
    other = await make_world(client, "b")
    reads = count_step_reads(database, monkeypatch)
    for pipeline_id in (world.pipeline_id, other.pipeline_id, world.pipeline_id):
        await new_job(client, pipeline_id)
    assert reads == [world.pipeline_id, other.pipeline_id, world.pipeline_id]


async def test_a_job_of_an_unknown_pipeline_is_404_and_nothing_is_kept(
    client: httpx.AsyncClient, database: Database, monkeypatch: pytest.MonkeyPatch
):
    reads = count_step_reads(database, monkeypatch)
    missing = "0190a5a4-0000-7000-8000-000000000000"
    for _ in range(2):
        response = await client.post(f"/api/v1/pipelines/{missing}/jobs")
        assert response.status_code == 404
    assert reads == []  # refused by the access check before any read of its steps
