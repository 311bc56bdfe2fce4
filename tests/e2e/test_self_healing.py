"""keyd's cache dies with keyd; the API notices the new boot id and loads every running
job's secrets again, so a job's worker recovers by itself, with the same token."""

from __future__ import annotations

import os
import signal

import pytest

from danube_shared.errors import KeydRejected, KeydUnavailable
from danube_shared.keyd_worker_client import fetch_job_secrets
from tests.support.stack import Stacks, keyd_ping, wait_for

pytestmark = pytest.mark.e2e

# The API pings keyd about once a second, so the reload comes within a few seconds; a
# reload that has not come after this long is a hang. It guards against a hang, not a
# speed: the suite never fails on a timing.
HANG_GUARD_S = 30.0


def test_running_jobs_secrets_come_back_after_keyd_restarts_and_finished_ones_do_not(
    stacks: Stacks,
):
    """Start two jobs, kill -9 keyd, finish one of them: without anyone acting, the
    running job's worker gets its secrets again with the same token; the finished job's
    fetch answers not_found."""
    home, port = stacks.home()
    # No worker of the stack's own: the test claims the jobs itself, to hold their tokens.
    stack, _up = stacks.start(home, port, "--workers", "0")
    with stack.client() as client:
        team = client.post("/api/v1/teams", json={"name": "heal"}).json()
        pipeline = client.post(
            f"/api/v1/teams/{team['id']}/pipelines",
            json={"name": "build", "steps": [{"name": "make", "command": "make"}]},
        )
        assert pipeline.status_code == 201, pipeline.text
        pipeline_id = pipeline.json()["id"]
        for url, value in (
            (f"/api/v1/teams/{team['id']}/secrets/DEPLOY_TOKEN", "team-value"),
            (f"/api/v1/pipelines/{pipeline_id}/secrets/DEPLOY_TOKEN", "pipeline-value"),
            (f"/api/v1/teams/{team['id']}/secrets/REGISTRY", "registry-value"),
        ):
            put = client.put(url, json={"value": value})
            assert put.is_success, put.text
        tokens: dict[str, str] = {}
        for _ in range(2):
            job = client.post(f"/api/v1/pipelines/{pipeline_id}/jobs")
            assert job.status_code == 201, job.text
            claimed, token = stack.claim()
            assert claimed["id"] == job.json()["id"]
            tokens[claimed["id"]] = token
        running, finishing = list(tokens)

        expected = {"DEPLOY_TOKEN": b"pipeline-value", "REGISTRY": b"registry-value"}
        for job_id, token in tokens.items():
            assert fetch_job_secrets(stack.socket_dir, job_id, token) == expected

        keyd_pid = stack.wait_running("keyd")
        old_boot = keyd_ping(stack.socket_dir)["boot_id"]
        os.kill(keyd_pid, signal.SIGKILL)
    with stack.worker_client() as worker:
        finished = worker.post(f"/api/v1/jobs/{finishing}/finish", json={"status": "succeeded"})
        assert finished.status_code == 200, finished.text

    def keyd_back() -> bool:
        try:
            return keyd_ping(stack.socket_dir, 200)["boot_id"] != old_boot
        except AssertionError:
            return False

    wait_for(keyd_back, HANG_GUARD_S, "keyd to answer again", interval=0.1)

    def fetched() -> dict[str, bytes] | None:
        try:
            return fetch_job_secrets(stack.socket_dir, running, tokens[running])
        except (KeydUnavailable, KeydRejected):
            return None

    # Nobody acts: the reload happening at all is the behaviour; the guard is for a hang.
    secrets = wait_for(fetched, HANG_GUARD_S, "the running job's secrets", interval=0.1)
    assert secrets == expected

    with pytest.raises(KeydRejected) as refused:
        fetch_job_secrets(stack.socket_dir, finishing, tokens[finishing])
    assert refused.value.reason == "not_found"
