"""Jobs run end to end by a real worker under `danube up --workers 1`: steps' outcomes,
their logs, signals, cancel, timeouts, the step's environment, and a worker lost.

The scenarios share one stack (starting one costs seconds): each makes its own team and
pipeline, so none sees another's jobs. The stack has a short kill grace and worker
timeout, so timeouts, cancels and lost workers end in seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.pipelines import (
    log_of,
    pipeline_of,
    run_job,
    step_statuses,
    trigger,
    wait_job,
)
from tests.support.processes import alive, live_pids_where, proc_bytes
from tests.support.stack import Stack, wait_for
from tests.support.stack import stacks as started_stacks

pytestmark = pytest.mark.e2e

WORKER = "worker:worker-0"
WORKER_TIMEOUT_S = 3
KILL_GRACE_S = 1
# A variable in the environment of `danube up` (so of supervisord and its workers) that
# a step must not see.
MARKER_NAME = "E2E_WORKER_MARKER"
MARKER_VALUE = f"marker-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with started_stacks() as started:
        home, port = started.home(
            api=f"worker_timeout_s = {WORKER_TIMEOUT_S}\n",
            worker=f"kill_grace_s = {KILL_GRACE_S}\nheartbeat_s = 1\nclaim_wait_s = 5\n",
        )
        stack, _up = started.start(
            home, port, "--workers", "1", env_extra={MARKER_NAME: MARKER_VALUE}
        )
        yield stack


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def step_processes(job_id: str) -> list[int]:
    """Live processes that a step of the job started (they carry its DANUBE_JOB_ID)."""
    marker = f"DANUBE_JOB_ID={job_id}".encode()
    return live_pids_where(lambda pid: marker in proc_bytes(pid, "environ"))


def test_a_three_step_pipeline_succeeds_and_its_logs_hold_what_each_step_printed(
    client: httpx.Client,
):
    pipeline = pipeline_of(
        client,
        "echo first step",
        'echo "second is $DANUBE_STEP_NAME"; echo to stderr >&2',
        "printf 'third\\nand last\\n'",
    )
    job = run_job(client, pipeline)
    assert job["status"] == "succeeded", job
    assert step_statuses(job) == ["succeeded"] * 3
    assert [step["exit_code"] for step in job["steps"]] == [0, 0, 0]
    assert log_of(client, job["id"], 0) == b"first step\n"
    assert log_of(client, job["id"], 1) == b"second is step-1\nto stderr\n"
    assert log_of(client, job["id"], 2) == b"third\nand last\n"


def test_a_failing_step_fails_the_job_and_skips_the_steps_after_it(client: httpx.Client):
    pipeline = pipeline_of(client, "echo fine", "echo broken; exit 3", "echo never")
    job = run_job(client, pipeline)
    assert job["status"] == "failed", job
    assert step_statuses(job) == ["succeeded", "failed", "skipped"]
    assert job["steps"][1]["exit_code"] == 3
    assert log_of(client, job["id"], 1) == b"broken\n"
    assert log_of(client, job["id"], 2) == b""


@pytest.mark.parametrize(("name", "number"), [("TERM", 15), ("KILL", 9)])
def test_a_step_killed_by_a_signal_has_exit_code_128_plus_its_number(
    client: httpx.Client, name: str, number: int
):
    job = run_job(client, pipeline_of(client, f"kill -{name} $$"))
    assert job["status"] == "failed", job
    assert job["steps"][0]["status"] == "failed"
    assert job["steps"][0]["exit_code"] == 128 + number


def test_cancelling_a_running_job_stops_its_step_and_ends_it_cancelled(client: httpx.Client):
    pipeline = pipeline_of(client, "echo started; exec sleep 1000", "echo never")
    job_id = trigger(client, pipeline)["id"]
    wait_job(client, job_id, lambda job: job["steps"][0]["status"] == "running", "step 0 to run")
    wait_for(lambda: b"started" in log_of(client, job_id, 0), 30, "the step's first line")

    cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    job = wait_job(client, job_id)
    assert job["status"] == "cancelled", job
    assert step_statuses(job) == ["cancelled", "skipped"]
    assert step_processes(job_id) == []


def test_a_step_that_times_out_fails_and_nothing_it_started_survives(client: httpx.Client):
    """The step starts an escapee in a session of its own, then outlives its 2 s: once
    the step is final the escapee is gone too (SIGTERM, SIGKILL after the grace)."""
    pipeline = pipeline_of(
        client,
        # The escapee ignores SIGTERM, so only the SIGKILL after the grace ends it.
        "setsid sh -c 'trap \"\" TERM; echo escapee $$; exec sleep 1000' & sleep 1000",
        timeout_s=2,
    )
    job = run_job(client, pipeline)
    assert job["status"] == "failed", job
    assert job["reason"] == "step step-0 timed out after 2 s"
    assert job["steps"][0]["status"] == "failed"
    assert job["steps"][0]["exit_code"] is None
    printed = re.search(rb"escapee (\d+)", log_of(client, job["id"], 0))
    assert printed, "the escapee never printed its pid"
    assert not alive(int(printed.group(1)))
    assert step_processes(job["id"]) == []


def test_a_step_sees_neither_a_token_nor_the_workers_environment(
    stack: Stack, client: httpx.Client
):
    worker_environment = Path(f"/proc/{stack.wait_running(WORKER)}/environ").read_bytes()
    # The marker did reach the worker: its absence from the step is the worker's doing.
    assert f"{MARKER_NAME}={MARKER_VALUE}".encode() in worker_environment

    job = run_job(client, pipeline_of(client, "env"))
    assert job["status"] == "succeeded", job
    printed = log_of(client, job["id"], 0).decode()
    names = {line.split("=", 1)[0] for line in printed.splitlines() if "=" in line}
    assert MARKER_NAME not in printed
    assert MARKER_VALUE not in printed
    assert "dnb_" not in printed
    assert f"DANUBE_JOB_ID={job['id']}" in printed
    assert names <= {
        "PATH",
        "HOME",
        "LANG",
        "CI",
        "DANUBE_JOB_ID",
        "DANUBE_JOB_NUMBER",
        "DANUBE_PIPELINE_ID",
        "DANUBE_STEP_NAME",
        # What /bin/sh itself sets.
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    }, names


def test_a_worker_killed_with_sigkill_leaves_its_job_failed_as_worker_lost(
    stack: Stack, client: httpx.Client
):
    pipeline = pipeline_of(client, "echo started; exec sleep 1000", "echo never")
    job_id = trigger(client, pipeline)["id"]
    wait_for(lambda: b"started" in log_of(client, job_id, 0), 30, "the step's first line")
    worker = stack.wait_running(WORKER)
    try:
        os.kill(worker, signal.SIGKILL)
        job = wait_job(client, job_id)
    finally:
        # The step outlives its killed worker (reparented away): end it here.
        for pid in step_processes(job_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert job["status"] == "failed", job
    assert job["reason"] == "worker lost"
    assert step_statuses(job) == ["failed", "skipped"]
    # supervisord starts another worker, which runs the next job.
    stack.wait_running(WORKER, not_pid=worker)
    assert run_job(client, pipeline_of(client, "true"))["status"] == "succeeded"
