"""The `startup` target: `danube up` on a fresh home until `/readyz` answers 200, over a
bare uvicorn app (the same stack: FastAPI, uvloop, httptools) until its first 200.

What bounds it: the line also gives the CPU each program of `danube up` had used by the
time `/readyz` answered (the migrator's, once it has exited, from supervisord's count of
its reaped children), and the bare app's, against the 2 cores both share.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks.processes import cpu_seconds, free_port, python_module, running
from benchmarks.report import Report
from benchmarks.stack import program, stack_home, wait_http_ok, write_config

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The programs of `danube up`, by a word of their command lines.
_PROGRAMS = ("danube-migrate", "danube-keyd", "danube-api", "danube-worker", "supervisord")


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[parent].append(int(entry.name))
    return children


def _name(pid: int) -> str:
    try:
        words = (Path(f"/proc/{pid}") / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    for word in words:
        for name in _PROGRAMS:
            if name.encode() in word:
                return name
    return "other"


def _reaped_children_cpu(pid: int) -> float:
    """CPU of `pid`'s children that have exited and been waited for (the migrator)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / _CLOCK_TICKS


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds used so far by `root` (`danube up`) and each program under it."""
    used: dict[str, float] = defaultdict(float)
    children = _children()
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            used["danube up" if pid == root else _name(pid)] += cpu_seconds(pid)
        except OSError:
            continue
        if _name(pid) == "supervisord":
            used["danube-migrate (exited)"] += _reaped_children_cpu(pid)
        pending.extend(children.get(pid, []))
    return dict(used)


def time_danube_up(cpu: list[dict[str, float]]) -> float:
    with stack_home() as home:
        port = free_port()
        write_config(home, port)
        with running([program("danube"), "up", "--home", str(home)], log=home / "up.log") as up:
            elapsed = wait_http_ok(f"http://127.0.0.1:{port}/readyz", 60)
            cpu.append(tree_cpu(up.pid))
            return elapsed


def time_bare_start(cpu: list[float]) -> float:
    port = free_port()
    with running(python_module("benchmarks.bare_http", str(port))) as bare:
        elapsed = wait_http_ok(f"http://127.0.0.1:{port}/ping", 60)
        cpu.append(cpu_seconds(bare.pid))
        return elapsed


def run(report: Report, repeats: int) -> None:
    # Alternate the two so that drift in the machine's load hits both alike.
    ups: list[float] = []
    bares: list[float] = []
    up_cpu: list[dict[str, float]] = []
    bare_cpu: list[float] = []
    for _ in range(repeats):
        ups.append(time_danube_up(up_cpu))
        bares.append(time_bare_start(bare_cpu))
    ratio = statistics.median(ups) / statistics.median(bares)
    report.target("startup", ratio, 3.0, higher_is_better=False)
    report.raw(
        f"startup: danube up (fresh home: keygen, migrate, supervisord, keyd, api) to /readyz "
        f"{statistics.median(ups):.2f} s [{', '.join(f'{t:.2f}' for t in ups)}]; bare uvicorn "
        f"to first 200 {statistics.median(bares):.2f} s [{', '.join(f'{t:.2f}' for t in bares)}]"
    )
    names = sorted({name for used in up_cpu for name in used})
    medians = {name: statistics.median(used.get(name, 0.0) for used in up_cpu) for name in names}
    shares = ", ".join(f"{name} {cpu:.2f}" for name, cpu in medians.items() if cpu >= 0.01)
    total = statistics.median(sum(used.values()) for used in up_cpu)
    report.raw(
        f"startup CPU s used by the time /readyz answered (medians; 2 cores): {shares}; "
        f"all {total:.2f} over {statistics.median(ups):.2f} s; bare app "
        f"{statistics.median(bare_cpu):.2f} over {statistics.median(bares):.2f} s"
    )
