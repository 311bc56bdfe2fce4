"""keyd dying or hanging under supervisord: the API answers 503 within its deadline (never
500, never a hang), and serves normally again once keyd is back, without a restart."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import httpx
import pytest

from tests.support.stack import KEYD_TIMEOUT_MS, Load, Stack, Stacks, wait_for

pytestmark = pytest.mark.e2e

DEADLINE_S = KEYD_TIMEOUT_MS / 1000
# A request slower than this hangs: ten times keyd's deadline in these tests. It guards
# against a hang, not a speed (the suite never fails on a timing), and stays below the
# clients' own timeout so that a hang is reported by these assertions.
HANG_GUARD_S = 10 * DEADLINE_S


def _team(stack: Stack) -> str:
    with stack.client() as client:
        response = client.post("/api/v1/teams", json={"name": "faults"})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


def _put_secret(team_id: str):
    """A request that needs keyd: storing a secret makes keyd encrypt it."""

    def put(client: httpx.Client, tag: str) -> httpx.Response:
        name = f"S_{tag.replace('-', '_')}"
        return client.put(f"/api/v1/teams/{team_id}/secrets/{name}", json={"value": "v" + tag})

    return put


def test_keyd_killed_under_load_is_restarted_and_the_api_answers_503_meanwhile(
    stacks: Stacks,
):
    """kill -9 keyd three times in a row while requests that need it are in flight:
    supervisord restarts it each time; meanwhile those requests get 503 (never 500, never
    a hang); afterwards they succeed, from the same API process."""
    # keyd is back within a few hundred milliseconds; a deadline shorter than that gap
    # makes the gap visible as 503s instead of as requests that wait for the new keyd.
    deadline_s = 0.1
    home, port = stacks.home(keyd_timeout_ms=round(deadline_s * 1000))
    stack, _up = stacks.start(home, port)
    team_id = _team(stack)
    api_pid = stack.program("api").pid
    keyd_pid = stack.wait_running("keyd")

    kills: list[float] = []
    with Load(stack, _put_secret(team_id), threads=4) as load:
        load.wait_success_since(0.0, count=5)
        for _round in range(3):
            kills.append(time.monotonic())
            os.kill(keyd_pid, signal.SIGKILL)
            # RUNNING: it stayed up its startsecs, so the next kill is not a failed start.
            keyd_pid = stack.wait_running("keyd", not_pid=keyd_pid)
            load.wait_success_since(time.monotonic(), count=3)

    statuses = Counter(status for _, _, status in load.results)
    assert set(statuses) <= {201, 503}, (statuses, load.bodies)
    gaps_seen = [
        any(status == 503 and kill <= started < kill + 5 for started, _, status in load.results)
        for kill in kills
    ]
    assert gaps_seen == [True, True, True], statuses
    slowest = max(ended - started for started, ended, _ in load.results)
    assert slowest <= HANG_GUARD_S, slowest  # a hang guard, not a speed
    assert "keyd" in load.bodies[503]
    assert stack.program("api").pid == api_pid
    assert stack.readyz().status_code == 200


def test_keyd_stopped_past_the_deadline_gives_503_not_a_hang_then_normal_service(
    stacks: Stacks,
):
    """SIGSTOP keyd for three deadlines: every request needing keyd, and /readyz, answers
    503 (never 500, never a hang); after SIGCONT the same keyd serves again, nothing
    restarted."""
    home, port = stacks.home()
    stack, _up = stacks.start(home, port)
    team_id = _team(stack)
    put = _put_secret(team_id)
    api_pid = stack.program("api").pid
    keyd_pid = stack.wait_running("keyd")

    answers: list[tuple[int, float, str]] = []
    with stack.client(timeout=15.0) as client:
        assert put(client, "before").is_success
        os.kill(keyd_pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            count = 0
            while time.monotonic() - stopped < 3 * DEADLINE_S:
                count += 1
                started = time.monotonic()
                response = put(client, f"stopped-{count}")
                answers.append((response.status_code, time.monotonic() - started, response.text))
            started = time.monotonic()
            ready = client.get("/readyz")
            ready_elapsed = time.monotonic() - started
        finally:
            os.kill(keyd_pid, signal.SIGCONT)

        assert [status for status, _, _ in answers] == [503] * len(answers), answers
        # Hang guards, not speeds: a 503 is the behaviour, however long it took.
        assert max(elapsed for _, elapsed, _ in answers) <= HANG_GUARD_S, answers
        assert "keyd" in answers[0][2]
        assert ready.status_code == 503
        assert "keyd" in ready.json()["detail"]
        assert ready_elapsed <= HANG_GUARD_S

        wait_for(lambda: put(client, "after").is_success, 10, "service after SIGCONT")
    assert stack.program("keyd").pid == keyd_pid
    assert stack.program("api").pid == api_pid
    stack.wait_ready(10)
