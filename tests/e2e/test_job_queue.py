"""The queue of pending jobs on a real stack: a pending job cancelled before any worker
claims it, and many jobs taken by several workers at once, each run exactly once."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.e2e.pipelines import (
    FINAL,
    JOB_HANG_GUARD_S,
    job_of,
    log_of,
    pipeline_of,
    step_statuses,
    trigger,
)
from tests.support.stack import Stacks, wait_for

pytestmark = pytest.mark.e2e

JOBS = 30


def test_a_pending_job_is_cancelled_at_once_and_never_claimed(stacks: Stacks):
    home, port = stacks.home()
    stack, _up = stacks.start(home, port, "--workers", "0")
    with stack.client() as client:
        job = trigger(client, pipeline_of(client, "echo never", "echo never"))
        assert job["status"] == "pending"

        cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert step_statuses(cancelled.json()) == ["skipped", "skipped"]
        assert job_of(client, job["id"])["status"] == "cancelled"
    with stack.worker_client() as worker:
        assert worker.post("/api/v1/worker/claim").status_code == 204


def test_three_workers_run_thirty_jobs_each_exactly_once(stacks: Stacks):
    """Every run appends its job's id to one file outside the workspaces: it holds each
    job exactly once, and each job's log tells the one worker process that ran it."""
    home, port = stacks.home(worker="heartbeat_s = 1\nclaim_wait_s = 5\n")
    stack, _up = stacks.start(home, port, "--workers", "3")
    runs = home / "runs.txt"
    workers = {stack.wait_running(f"worker:worker-{number}") for number in range(3)}
    with stack.client() as client:
        pipeline = pipeline_of(
            client,
            # $PPID: the worker process whose shell this is.
            f'echo "$DANUBE_JOB_ID" >> {runs}; sleep 0.2; echo "run by $PPID"',
        )
        jobs = [trigger(client, pipeline)["id"] for _ in range(JOBS)]

        def all_final() -> list[dict[str, object]] | None:
            found = [job_of(client, job_id) for job_id in jobs]
            return found if all(job["status"] in FINAL for job in found) else None

        final = wait_for(all_final, JOB_HANG_GUARD_S * 3, f"{JOBS} jobs to end", interval=0.5)
        assert [job["status"] for job in final] == ["succeeded"] * JOBS
        assert len({job["worker_id"] for job in final}) == 1  # one worker record, 3 processes
        runners: Counter[int] = Counter()
        for job_id in jobs:
            printed = log_of(client, job_id, 0).decode()
            ran = re.findall(r"run by (\d+)", printed)
            assert len(ran) == 1, (job_id, printed)
            runners[int(ran[0])] += 1
    assert sorted(runs.read_text().split()) == sorted(jobs)
    assert set(runners) <= workers
    assert sum(runners.values()) == JOBS
