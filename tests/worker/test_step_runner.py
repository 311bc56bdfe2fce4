"""A step's shell, environment, output and end, with real processes.

These run in pytest's own process, which is not a child subreaper (see
`process_scenarios.py`): what they stop is found below the step's shell. So each step
that gets stopped has forked all it will before it is stopped: without the subreaper, a
child forked by a shell in the instant it is killed would be re-parented to init, out of
reach. Escapees and forks during a stop, which need the subreaper as the worker has it,
are tested through the scenario driver.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from danube_shared.errors import InvalidInput
from danube_worker.process_tree import ProcessTree
from danube_worker.step_runner import (
    RESERVED_NAMES,
    StepEnd,
    StepResult,
    StepRunner,
    step_environment,
)
from tests.support.processes import alive
from tests.support.stack import processes_of
from tests.worker.process_scenarios import DRIVER, READY, RESULT_PREFIX

# A hang guard, not a timing: every step here ends in well under a second when it works.
HANG_GUARD_S = 60
CANARY = "DANUBE_WORKER_TEST_CANARY"


def environment_for(workspace: Path, secrets: dict[str, bytes] | None = None) -> dict[str, str]:
    return step_environment(
        path=os.environ["PATH"],
        workspace=workspace,
        job_id="6f1c2a1e-job",
        job_number=42,
        pipeline_id="9d3b-pipeline",
        step_name="build",
        secrets=secrets or {},
    )


class Step:
    """One StepRunner in pytest's process, collecting what a step prints."""

    def __init__(self, workspace: Path, *, kill_grace_s: float = 2.0) -> None:
        self.workspace = workspace
        self.runner = StepRunner(tree=ProcessTree(), kill_grace_s=kill_grace_s)
        self.output = bytearray()
        self.cancel = asyncio.Event()

    async def sink(self, chunk: bytes) -> None:
        self.output += chunk

    async def run(
        self,
        command: str,
        *,
        timeout_s: float = 30,
        environment: dict[str, str] | None = None,
        sink: Callable[[bytes], Any] | None = None,
    ) -> StepResult:
        return await asyncio.wait_for(
            self.runner.run(
                command,
                workspace=self.workspace,
                environment=environment or environment_for(self.workspace),
                timeout_s=timeout_s,
                cancel=self.cancel,
                on_output=sink or self.sink,
            ),
            HANG_GUARD_S,
        )


@pytest.fixture
def step(workspace: Path) -> Step:
    return Step(workspace)


async def test_exit_zero_is_succeeded(step: Step):
    assert await step.run("true") == StepResult(end=StepEnd.SUCCEEDED, exit_code=0)


async def test_a_shell_that_closes_its_output_long_before_it_exits_ends_at_its_exit(
    step: Step,
):
    """End of file comes first; the step still waits for the shell and its exit code."""
    result = await step.run("echo before; exec >/dev/null 2>&1; sleep 0.3; exit 5")
    assert result == StepResult(end=StepEnd.FAILED, exit_code=5)
    assert step.output == b"before\n"


async def test_exit_three_is_failed_with_three(step: Step):
    result = await step.run("exit 3")
    assert result == StepResult(end=StepEnd.FAILED, exit_code=3)
    assert result.status == "failed"


async def test_a_shell_killed_by_signal_n_exits_128_plus_n(step: Step):
    assert await step.run("kill -KILL $$") == StepResult(end=StepEnd.FAILED, exit_code=128 + 9)


async def test_the_shell_runs_in_the_workspace_in_its_own_session(step: Step):
    await step.run("pwd; cut -d' ' -f6 /proc/$$/stat; echo $$; read line; echo stdin=$?")
    cwd, session, pid, stdin = step.output.decode().split()
    assert Path(cwd) == step.workspace
    assert session == pid  # the shell leads a new session
    assert stdin == "stdin=1"  # /dev/null: end of file at once


async def test_the_shell_gets_exactly_the_given_environment(
    step: Step, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(CANARY, "planted in the worker")
    environment = environment_for(
        step.workspace, {"TOKEN": "s3cr\u00e9t\nsecond line".encode(), "EMPTY": b""}
    )
    await step.run("cat /proc/$$/environ", environment=environment)
    received = dict(entry.split(b"=", 1) for entry in bytes(step.output).split(b"\0") if entry)
    assert received == {name.encode(): value.encode() for name, value in environment.items()}


async def test_env_in_a_step_shows_the_listed_variables_and_nothing_of_the_worker(
    step: Step, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(CANARY, "planted in the worker")
    await step.run("env", environment=environment_for(step.workspace, {"API_KEY": b"abcd"}))
    seen = dict(line.split("=", 1) for line in step.output.decode().splitlines())
    assert CANARY not in seen
    # dash exports PWD itself; everything else is what DESIGN 12 lists, and the secret.
    assert set(seen) == RESERVED_NAMES | {"API_KEY", "PWD"}
    assert seen["HOME"] == str(step.workspace)
    assert seen["LANG"] == "C.UTF-8"
    assert seen["CI"] == "true"
    assert seen["DANUBE_JOB_ID"] == "6f1c2a1e-job"
    assert seen["DANUBE_JOB_NUMBER"] == "42"
    assert seen["DANUBE_PIPELINE_ID"] == "9d3b-pipeline"
    assert seen["DANUBE_STEP_NAME"] == "build"
    assert seen["API_KEY"] == "abcd"


def test_a_secret_cannot_replace_a_listed_variable(workspace: Path):
    environment = environment_for(workspace, {"PATH": b"/evil", "HOME": b"/evil"})
    assert environment["PATH"] == os.environ["PATH"]
    assert environment["HOME"] == str(workspace)


def test_a_secret_that_is_not_utf8_is_refused_by_name_without_its_value(workspace: Path):
    with pytest.raises(InvalidInput) as refused:
        environment_for(workspace, {"BINARY_KEY": b"\xffsecret-bytes"})
    assert "BINARY_KEY" in str(refused.value)
    assert "secret-bytes" not in str(refused.value)
    assert refused.value.__cause__ is None
    assert refused.value.__suppress_context__


async def test_a_background_process_holding_the_pipe_does_not_hold_the_step(step: Step):
    # If the runner waited for end-of-file, this would last until the hang guard.
    result = await step.run("sleep 1000 & echo $!; echo done")
    pid, done = step.output.decode().split()
    assert result == StepResult(end=StepEnd.SUCCEEDED, exit_code=0)
    assert done == "done"
    assert alive(int(pid))  # what a step leaves running lives on, for later steps


async def test_output_larger_than_the_pipe_buffer_is_delivered_whole(step: Step):
    expected = b"".join(b"%07d\n" % n for n in range(131072))  # 1 MiB
    (step.workspace / "big").write_bytes(expected)

    async def slow_sink(chunk: bytes) -> None:
        step.output += chunk
        await asyncio.sleep(0)  # the pipe fills up while the sink is busy

    result = await step.run("cat big; echo tail >&2", sink=slow_sink)
    assert result.exit_code == 0
    assert bytes(step.output) == expected + b"tail\n"


async def test_stdout_and_stderr_are_merged_in_order(step: Step):
    await step.run("echo one; echo two >&2; echo three")
    assert step.output == b"one\ntwo\nthree\n"


async def test_a_step_past_its_timeout_is_stopped_with_no_exit_code(step: Step):
    result = await step.run("sleep 1000 & sleep 1000; echo never", timeout_s=0.5)
    assert result == StepResult(end=StepEnd.TIMED_OUT, exit_code=None)
    assert result.status == "failed"
    assert b"never" not in step.output
    assert processes_of(step.workspace) == []


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace(workspace: Path):
    step = Step(workspace, kill_grace_s=1.0)
    started = time.monotonic()
    result = await step.run("trap '' TERM; sleep 1000", timeout_s=0.5)
    # A lower bound only: SIGKILL may not come before the grace has passed.
    assert time.monotonic() - started >= 0.5 + 1.0
    assert result == StepResult(end=StepEnd.TIMED_OUT, exit_code=None)
    assert processes_of(workspace) == []


async def test_sigterm_comes_first_and_sigkill_ends_what_survives_it(workspace: Path):
    step = Step(workspace, kill_grace_s=1.0)
    result = await step.run(
        "trap 'echo got TERM' TERM; (trap '' TERM; exec sleep 1000) & echo ready;"
        " while :; do wait; done",
        timeout_s=0.5,
    )
    assert result.end is StepEnd.TIMED_OUT
    lines = step.output.decode().splitlines()
    assert lines[:2] == ["ready", "got TERM"]
    assert processes_of(workspace) == []


async def test_cancel_stops_the_step(step: Step):
    async def cancel_once_started(chunk: bytes) -> None:
        step.output += chunk
        if b"started" in step.output:
            step.cancel.set()

    result = await step.run(
        "sleep 1000 & sleep 1000 & echo started; wait", sink=cancel_once_started, timeout_s=300
    )
    assert result == StepResult(end=StepEnd.CANCELLED, exit_code=None)
    assert result.status == "cancelled"
    assert processes_of(step.workspace) == []


async def test_a_failing_sink_stops_the_step_and_its_error_propagates(step: Step):
    class SinkBroke(Exception):
        pass

    async def broken_sink(chunk: bytes) -> None:
        raise SinkBroke

    with pytest.raises(SinkBroke):
        await step.run("sleep 1000 & echo hello; wait", sink=broken_sink)
    assert processes_of(step.workspace) == []


async def test_escapees_are_gone_after_a_timeout(scenario: Callable[[str], dict[str, Any]]):
    seen = scenario("escapees_on_timeout")
    assert (seen["end"], seen["exit_code"]) == ("timed out", None)
    # They did escape: one leads its own session, the other was re-parented to the worker.
    assert seen["setsid_session"] == seen["setsid_pid"]
    assert seen["double_parent"] == seen["worker_pid"]
    # Gone (and reaped: no zombie) before the result, and still gone now.
    assert seen["left"] == []
    assert seen["zombies"] == []
    assert not alive(seen["setsid_pid"])
    assert not alive(seen["double_pid"])


async def test_processes_forked_while_the_step_is_stopped_are_stopped_too(
    scenario: Callable[[str], dict[str, Any]],
):
    seen = scenario("forking_during_stop")
    assert (seen["end"], seen["exit_code"]) == ("timed out", None)
    assert seen["orphans_seen"] > 0
    assert seen["left"] == []
    assert seen["zombies"] == []


def test_sigterm_to_the_worker_cancels_its_step_and_stops_its_job(workspace: Path):
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), "worker_sigterm", str(workspace)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None
        # Hang guards: the driver says READY once its step runs, then ends on SIGTERM.
        ready, _, _ = select.select([driver.stdout], [], [], HANG_GUARD_S)
        assert ready, "the driver never said it was ready"
        assert driver.stdout.readline().strip() == READY
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=HANG_GUARD_S)
    finally:
        driver.kill()
        driver.wait()
    assert driver.returncode == 0
    (line,) = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    seen = json.loads(line.removeprefix(RESULT_PREFIX))
    assert seen["earlier"] == {"end": "succeeded", "exit_code": 0}
    assert (seen["end"], seen["exit_code"]) == ("cancelled", None)
    assert seen["left"] == []
    assert seen["zombies"] == []
    assert not alive(seen["leftover"])
    assert processes_of(workspace) == []
