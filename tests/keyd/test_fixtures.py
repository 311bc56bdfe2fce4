"""The keyd fixtures' teardown: every process a test started dies, whatever fails."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.keyd import kill_every, kill_strays


class _Stuck:
    def kill(self) -> None:
        raise subprocess.TimeoutExpired("danube-keyd", 10)


class _Sleeper:
    def __init__(self, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)", *argv],
            stdin=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def test_one_failed_kill_does_not_spare_the_others() -> None:
    """kill_every kills the processes after one whose kill raised, then re-raises it."""
    sleepers = [_Sleeper(), _Sleeper()]
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            kill_every([sleepers[0], _Stuck(), sleepers[1]])
        assert [s.process.poll() for s in sleepers] == [-9, -9]
    finally:
        for sleeper in sleepers:
            sleeper.kill()


def test_a_stray_keyd_naming_a_home_is_killed() -> None:
    """kill_strays kills a process whose command line names danube-keyd and the home,
    and leaves one that names another directory."""
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="dk"))
    other = Path(tempfile.mkdtemp(dir="/tmp", prefix="dk"))
    stray = _Sleeper("danube-keyd", "--config", f"{home}/danube.toml")
    bystander = _Sleeper("danube-keyd", "--config", f"{other}/danube.toml")
    try:
        assert kill_strays([home]) == [stray.process.pid]
        assert stray.process.wait(10) == -9
        assert bystander.process.poll() is None
    finally:
        stray.kill()
        bystander.kill()
        home.rmdir()
        other.rmdir()
