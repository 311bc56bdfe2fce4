"""Driving jobs through a real stack's API as a team member does: make a team and a
pipeline, trigger a job, wait until it is final, read its steps' stored (masked) logs."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.support.stack import wait_for

FINAL = frozenset({"succeeded", "failed", "cancelled"})
# How long a job of these tests may take to end before the test calls it a hang: it
# guards against a hang, not a speed (the suite never fails on a timing).
JOB_HANG_GUARD_S = 60.0


def new_team(client: httpx.Client) -> str:
    """A team with a unique name; returns its id."""
    team = client.post("/api/v1/teams", json={"name": f"team-{uuid.uuid4().hex[:12]}"})
    assert team.status_code == 201, team.text
    return str(team.json()["id"])


def new_pipeline(client: httpx.Client, team_id: str, steps: list[dict[str, Any]]) -> str:
    """A pipeline of `steps` (`{"name", "command", "timeout_s"?}`) in the team; its id."""
    pipeline = client.post(
        f"/api/v1/teams/{team_id}/pipelines",
        json={"name": f"p-{uuid.uuid4().hex[:12]}", "steps": steps},
    )
    assert pipeline.status_code == 201, pipeline.text
    return str(pipeline.json()["id"])


def pipeline_of(client: httpx.Client, *commands: str, timeout_s: int | None = None) -> str:
    """A pipeline, in a team of its own, whose steps run `commands` in order."""
    steps: list[dict[str, Any]] = []
    for number, command in enumerate(commands):
        step: dict[str, Any] = {"name": f"step-{number}", "command": command}
        if timeout_s is not None:
            step["timeout_s"] = timeout_s
        steps.append(step)
    return new_pipeline(client, new_team(client), steps)


def trigger(client: httpx.Client, pipeline_id: str) -> dict[str, Any]:
    job = client.post(f"/api/v1/pipelines/{pipeline_id}/jobs")
    assert job.status_code == 201, job.text
    return dict(job.json())


def job_of(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job = client.get(f"/api/v1/jobs/{job_id}")
    assert job.status_code == 200, job.text
    return dict(job.json())


def wait_job(
    client: httpx.Client,
    job_id: str,
    until: Any = None,
    what: str = "the job to end",
    timeout: float = JOB_HANG_GUARD_S,
) -> dict[str, Any]:
    """The job once `until(job)` holds (by default: once it is final)."""
    condition = until or (lambda job: job["status"] in FINAL)

    def reached() -> dict[str, Any] | None:
        job = job_of(client, job_id)
        return job if condition(job) else None

    return dict(wait_for(reached, timeout, what, interval=0.1))


def run_job(client: httpx.Client, pipeline_id: str) -> dict[str, Any]:
    """Trigger a job of the pipeline and wait until it is final."""
    return wait_job(client, trigger(client, pipeline_id)["id"])


def log_page(client: httpx.Client, job_id: str, position: int, offset: int) -> httpx.Response:
    page = client.get(f"/api/v1/jobs/{job_id}/steps/{position}/log", params={"offset": offset})
    assert page.status_code == 200, page.text
    return page


def log_of(client: httpx.Client, job_id: str, position: int) -> bytes:
    """A step's whole stored log, page by page."""
    data = b""
    while True:
        page = log_page(client, job_id, position, len(data))
        data += page.content
        if not page.content or len(data) >= int(page.headers["X-Log-Length"]):
            return data


def step_statuses(job: dict[str, Any]) -> list[str]:
    return [step["status"] for step in job["steps"]]
