"""The worker's process tree: finding descendants through /proc, stopping them, reaping.

Finding and stopping run in pytest's own process on children it starts; what needs the
child subreaper runs in the scenario driver (see `process_scenarios.py` for why).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from danube_worker.process_tree import ProcessIdentity, ProcessTree, is_child_subreaper
from tests.support.processes import alive
from tests.support.stack import wait_for


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children this test starts; each is killed and waited for at teardown."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        child.kill()
        child.wait(timeout=10)


def start(started: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    started.append(child)
    return child


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except FileNotFoundError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_grandchildren_are_descendants(workspace: Path, started):
    shell = start(started, "/bin/sh", "-c", "sleep 1000 & wait")
    wait_for(lambda: children_of(shell.pid), 10, "the shell's child")
    (grandchild,) = children_of(shell.pid)
    pids = {identity.pid for identity in ProcessTree().live_descendants()}
    assert {shell.pid, grandchild} <= pids


def test_a_command_name_with_parentheses_and_spaces_is_read_right(workspace: Path, started):
    odd = workspace / "a) b (c"
    shutil.copy("/bin/sleep", odd)
    child = start(started, str(odd), "1000")
    wait_for(lambda: b"a) b (c" in Path(f"/proc/{child.pid}/stat").read_bytes(), 10, "exec")
    assert child.pid in {identity.pid for identity in ProcessTree().live_descendants()}


def test_a_spared_process_and_everything_below_it_are_left_out(workspace: Path, started):
    shell = start(started, "/bin/sh", "-c", "sleep 1000 & wait")
    wait_for(lambda: children_of(shell.pid), 10, "the shell's child")
    tree = ProcessTree()
    spared = frozenset(i for i in tree.live_descendants() if i.pid == shell.pid)
    pids = {identity.pid for identity in tree.live_descendants(spared)}
    assert shell.pid not in pids
    assert not set(children_of(shell.pid)) & pids


def test_a_reused_pid_is_not_the_spared_process(workspace: Path, started):
    child = start(started, "sleep", "1000")
    tree = ProcessTree()
    (current,) = (i for i in tree.live_descendants() if i.pid == child.pid)
    earlier = ProcessIdentity(pid=child.pid, start_time=current.start_time - 1)
    assert child.pid in {i.pid for i in tree.live_descendants(frozenset({earlier}))}


async def test_stop_terminates_every_descendant_not_spared(workspace: Path, started):
    keep = start(started, "sleep", "1000")
    tree = ProcessTree()
    spared = tree.live_descendants()
    victim = start(started, "/bin/sh", "-c", "sleep 1000 & wait")
    wait_for(lambda: children_of(victim.pid), 10, "the victim's child")
    (grandchild,) = children_of(victim.pid)
    assert await tree.stop(spared=spared, grace_s=5) == frozenset()
    assert not alive(victim.pid)
    assert not alive(grandchild)
    assert alive(keep.pid)


def test_the_worker_becomes_a_child_subreaper(scenario: Callable[[str], dict[str, Any]]):
    assert scenario("subreaper") == {"before": False, "after": True}


def test_a_leftover_serves_later_steps_and_is_gone_after_the_job(
    scenario: Callable[[str], dict[str, Any]],
):
    seen = scenario("leftover_serves_later_steps")
    assert seen["first"] == {"end": "succeeded", "exit_code": 0}
    assert seen["second"] == {"end": "succeeded", "exit_code": 0}
    assert seen["second_output"] == "alive\n"
    # A later step's timeout stops that step only, not what an earlier one left.
    assert seen["timed_out"] == {"end": "timed out", "exit_code": None}
    assert seen["alive_after_timeout"]
    # stop_all_descendants() at the job's end: nothing left, nothing unreaped.
    assert seen["left"] == []
    assert seen["zombies"] == []
    assert not alive(seen["leftover"])


def test_reaping_orphans_never_takes_a_shells_exit_status(
    scenario: Callable[[str], dict[str, Any]],
):
    seen = scenario("reaper_beside_shells")
    assert seen["exit_codes"] == [7] * 20
    assert seen["zombies"] == []


def test_with_no_child_left_the_tree_answers_without_walking_proc(
    scenario: Callable[[str], dict[str, Any]],
):
    seen = scenario("quiet_tree_walks_no_proc")
    assert seen["quiet"] == {"end": "succeeded", "exit_code": 0}
    assert seen["quiet_walks"] == 0
    assert seen["walks_after_quiet"] == 0
    assert seen["quiet_left"] == []
    # Something left running: the walk finds it, and the job's end stops it.
    assert seen["busy"] == {"end": "succeeded", "exit_code": 0}
    assert seen["leftover"] in seen["found"]
    assert seen["walks_when_busy"] > 0
    assert seen["busy_left"] == []
    assert seen["zombies"] == []
    assert not alive(seen["leftover"])


def test_pytest_itself_is_left_no_subreaper():
    """The in-process tests rely on it, and so do other suites' /proc checks."""
    assert not is_child_subreaper()
