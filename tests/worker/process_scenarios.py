"""Scenarios that need a child subreaper, each run in a fresh Python process of its own.

`PR_SET_CHILD_SUBREAPER` is process-wide and cannot be scoped to a test: set in pytest's
own process, every orphan of every later test (a killed supervisord's programs, keyd's
children) would re-parent to pytest and stay a zombie there, and tests that check a
process is gone through /proc would see it. So each scenario runs here, as a worker
does, and prints what it saw as one JSON line; the tests assert on it and look at /proc
themselves after this process has exited.

Usage: python process_scenarios.py SCENARIO WORKSPACE
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from danube_worker import process_tree
from danube_worker.process_tree import ProcessTree, become_child_subreaper, is_child_subreaper
from danube_worker.step_runner import StepResult, StepRunner, step_environment

RESULT_PREFIX = "SCENARIO-RESULT "
READY = "SCENARIO-READY"
DRIVER = Path(__file__)


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _is_alive(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] not in {"Z", "X"}
    except (FileNotFoundError, ProcessLookupError):
        return False


def _children() -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == os.getpid():
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                # Gone between the listing and the read (ESRCH when it exits mid-read).
                continue
    return found


def _zombie_children() -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat_fields(int(entry.name))
            except FileNotFoundError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] == "Z":
                found.append(int(entry.name))
    return found


class _Step:
    """A StepRunner with the environment of a test job in WORKSPACE, collecting output."""

    def __init__(self, workspace: Path, *, kill_grace_s: float = 2.0) -> None:
        self.tree = ProcessTree()
        self.runner = StepRunner(tree=self.tree, kill_grace_s=kill_grace_s)
        self.workspace = workspace
        self.output = bytearray()
        self.cancel = asyncio.Event()
        self.on_output: Callable[[bytes], Awaitable[None]] = self._collect

    async def _collect(self, chunk: bytes) -> None:
        self.output += chunk

    async def run(self, command: str, *, timeout_s: float = 30.0) -> StepResult:
        self.output.clear()
        environment = step_environment(
            path=os.environ["PATH"],
            workspace=self.workspace,
            job_id="job",
            job_number=1,
            pipeline_id="pipeline",
            step_name="step",
            secrets={},
        )
        return await self.runner.run(
            command,
            workspace=self.workspace,
            environment=environment,
            timeout_s=timeout_s,
            cancel=self.cancel,
            on_output=self.on_output,
        )


def _result(result: StepResult) -> dict[str, Any]:
    return {"end": result.end.value, "exit_code": result.exit_code}


async def subreaper(workspace: Path) -> dict[str, Any]:
    before = is_child_subreaper()
    become_child_subreaper()
    return {"before": before, "after": is_child_subreaper()}


async def escapees_on_timeout(workspace: Path) -> dict[str, Any]:
    become_child_subreaper()
    step = _Step(workspace)
    seen: dict[str, Any] = {}

    async def observe() -> None:
        # Proof that they escaped: the first leads its own session, the second has been
        # re-parented to us, not to the step's shell.
        for _ in range(50):
            await asyncio.sleep(0.05)
            text = step.output.decode()
            lines = dict(line.split() for line in text[: text.rfind("\n") + 1].splitlines())
            if {"setsid", "double"} <= lines.keys():
                seen["setsid_pid"], seen["double_pid"] = int(lines["setsid"]), int(lines["double"])
                seen["setsid_session"] = int(_stat_fields(seen["setsid_pid"])[3])
                seen["double_parent"] = int(_stat_fields(seen["double_pid"])[1])
                if seen["double_parent"] == os.getpid():
                    return

    observing = asyncio.create_task(observe())
    result = await step.run(
        "setsid sh -c 'echo setsid $$; exec sleep 1000' &\n"
        "sh -c 'sh -c \"echo double \\$\\$; exec sleep 1000\" &'\n"
        "sleep 1000\n",
        timeout_s=3,
    )
    await observing
    return {
        **_result(result),
        **seen,
        "worker_pid": os.getpid(),
        "left": sorted(i.pid for i in step.tree.live_descendants()),
        "zombies": _zombie_children(),
    }


async def forking_during_stop(workspace: Path) -> dict[str, Any]:
    become_child_subreaper()
    step = _Step(workspace, kill_grace_s=0.5)
    children: set[int] = set()
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            children.update(_children())
            await asyncio.sleep(0.05)

    sampling = asyncio.create_task(sample())
    # Orphans keep appearing, and the shell ignores SIGTERM and forks on until SIGKILL.
    result = await step.run(
        "trap '' TERM; while :; do (sleep 1000 &); sleep 0.01; done", timeout_s=1
    )
    done.set()
    await sampling
    return {
        **_result(result),
        # Every child but the step's shell is an orphan of a subshell, re-parented to us.
        "orphans_seen": len(children) - 1,
        "left": sorted(i.pid for i in step.tree.live_descendants()),
        "zombies": _zombie_children(),
    }


async def leftover_serves_later_steps(workspace: Path) -> dict[str, Any]:
    become_child_subreaper()
    step = _Step(workspace, kill_grace_s=1)
    first = await step.run("sleep 1000 >/dev/null 2>&1 & echo $!")
    leftover = int(step.output.decode())
    second = await step.run(f"kill -0 {leftover} && echo alive")
    second_output = step.output.decode()
    timed_out = await step.run("sleep 1000", timeout_s=0.5)
    alive_after_timeout = _is_alive(leftover)
    await step.tree.stop_all_descendants(grace_s=1)
    return {
        "first": _result(first),
        "second": _result(second),
        "second_output": second_output,
        "timed_out": _result(timed_out),
        "leftover": leftover,
        "alive_after_timeout": alive_after_timeout,
        "left": sorted(i.pid for i in step.tree.live_descendants()),
        "zombies": _zombie_children(),
    }


async def reaper_beside_shells(workspace: Path) -> dict[str, Any]:
    become_child_subreaper()
    step = _Step(workspace)
    stop = asyncio.Event()

    async def reap_hard() -> None:
        # Far more often than a worker reaps, and between every two turns of the loop, where
        # a shell's zombie waits for the step runner: if the reaper could take a shell's
        # status, the step would lose its real exit code.
        while not stop.is_set():
            step.tree.reap_orphans()
            await asyncio.sleep(0)

    reaping = asyncio.create_task(reap_hard())
    exit_codes = [(await step.run("sh -c 'exit 0' & exit 7")).exit_code for _ in range(20)]
    stop.set()
    await reaping
    await asyncio.sleep(0.2)  # the last orphans die
    step.tree.reap_orphans()
    return {"exit_codes": exit_codes, "zombies": _zombie_children()}


async def quiet_tree_walks_no_proc(workspace: Path) -> dict[str, Any]:
    """With no child left, the tree answers without reading /proc (one `waitid` says so
    exactly); with one left, it walks /proc and finds it."""
    become_child_subreaper()
    step = _Step(workspace)
    walked: list[str] = []
    table = process_tree._process_table  # counting the walks is the point

    def counted() -> Any:
        walked.append("walk")
        return table()

    process_tree._process_table = counted
    quiet = await step.run("echo quiet")
    quiet_walks = len(walked)
    quiet_left = await step.tree.stop_all_descendants(grace_s=1)
    walks_after_quiet = len(walked)
    busy = await step.run("sleep 1000 >/dev/null 2>&1 & echo $!")
    leftover = int(step.output.decode().split()[-1])
    found = sorted(i.pid for i in step.tree.live_descendants())
    busy_left = await step.tree.stop_all_descendants(grace_s=1)
    return {
        "quiet": _result(quiet),
        "busy": _result(busy),
        "quiet_walks": quiet_walks,
        "walks_after_quiet": walks_after_quiet,
        "quiet_left": sorted(i.pid for i in quiet_left),
        "leftover": leftover,
        "found": found,
        "walks_when_busy": len(walked) - walks_after_quiet,
        "busy_left": sorted(i.pid for i in busy_left),
        "zombies": _zombie_children(),
    }


async def worker_sigterm(workspace: Path) -> dict[str, Any]:
    """SIGTERM to the worker (DESIGN 12): cancel the running step, stop what the job
    started, exit 0. The test sends SIGTERM to this process after it printed READY."""
    become_child_subreaper()
    step = _Step(workspace)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, step.cancel.set)
    earlier = await step.run("sleep 1000 >/dev/null 2>&1 & echo $!")
    leftover = int(step.output.decode())

    async def announce(chunk: bytes) -> None:
        step.output += chunk
        if chunk.endswith(b"started\n"):
            print(READY, flush=True)

    step.on_output = announce
    result = await step.run("sleep 1000 & echo started; wait", timeout_s=300)
    await step.tree.stop_all_descendants(grace_s=2)
    return {
        "earlier": _result(earlier),
        **_result(result),
        "leftover": leftover,
        "left": sorted(i.pid for i in step.tree.live_descendants()),
        "zombies": _zombie_children(),
    }


SCENARIOS = {
    f.__name__: f
    for f in (
        subreaper,
        escapees_on_timeout,
        forking_during_stop,
        leftover_serves_later_steps,
        reaper_beside_shells,
        quiet_tree_walks_no_proc,
        worker_sigterm,
    )
}


def main() -> None:
    name, workspace = sys.argv[1], Path(sys.argv[2])
    outcome = asyncio.run(SCENARIOS[name](workspace))
    print(RESULT_PREFIX + json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
