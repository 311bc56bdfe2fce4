"""Finding processes through /proc: whether a pid still runs, and which live processes
match a test's marker (a home directory on the command line, a job id in the environment).

A zombie or dead task counts as gone: it only waits to be reaped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def proc_bytes(pid: int, name: str) -> bytes:
    """The content of /proc/PID/NAME, or b"" once the process is gone (or unreadable)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it only waits to be reaped)."""
    stat_line = proc_bytes(pid, "stat")
    if not stat_line:
        return False
    return stat_line.rpartition(b")")[2].split()[0] not in (b"Z", b"X")


def live_pids_where(matches: Callable[[int], bool]) -> list[int]:
    """Live processes, other than this one, for which `matches(pid)` holds."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if matches(pid) and alive(pid):
            found.append(pid)
    return found
