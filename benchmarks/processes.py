"""Starting, watching and stopping the processes a benchmark measures."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User plus system CPU time a process has used so far; with `children`, also that of
    its children it has waited for (a worker's steps)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def machine_cpu_ticks() -> list[int]:
    """The machine's CPU time so far by kind, `/proc/stat`'s first line: user, nice,
    system, idle, iowait, irq, softirq, steal (the hypervisor's), guest, guest_nice."""
    return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def steal_share(before: list[int], after: list[int]) -> tuple[float, float]:
    """Of the vCPUs' time between two `machine_cpu_ticks`, the share the hypervisor took
    (steal) and the share they ran this machine's work (not idle, not steal)."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    # guest and guest_nice are already counted in user and nice.
    total = sum(delta[:8])
    if total <= 0:
        return 0.0, 0.0
    idle, steal = delta[3] + delta[4], delta[7]
    return steal / total, (total - idle - steal) / total


def rss_mib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * _PAGE_SIZE / 2**20


@dataclass
class CpuShare:
    """CPU used by the server and by the load generator over one measured interval."""

    server_s: float
    load_s: float
    wall_s: float

    def describe(self) -> str:
        server = self.server_s / self.wall_s
        load = self.load_s / self.wall_s
        bottleneck = "server" if server >= load else "load generator"
        return f"cpu server={server:.0%} load={load:.0%} of one core; bottleneck: {bottleneck}"


@contextlib.contextmanager
def cpu_share(server_pid: int, into: list[CpuShare]) -> Iterator[None]:
    """Measure the CPU of `server_pid` and of this process over the `with` block, and
    append the figures to `into`."""
    own = os.getpid()
    server0, load0, wall0 = cpu_seconds(server_pid), cpu_seconds(own), time.perf_counter()
    yield
    into.append(
        CpuShare(
            cpu_seconds(server_pid) - server0,
            cpu_seconds(own) - load0,
            time.perf_counter() - wall0,
        )
    )


@contextlib.contextmanager
def running(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a process in its own process group; kill the group on the way out."""
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        list(args),
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_group(proc)
        if log is not None and not isinstance(out, int):
            out.close()


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


@contextlib.contextmanager
def on_one_cpu(pids: Sequence[int]) -> Iterator[int]:
    """Every thread of `pids` (this process's too) confined to one CPU, the last this
    process may use, for the `with` block; their affinity before is restored after.
    Yields the CPU. For the informational figures that show what the cross-CPU wake-ups
    of a round trip cost on this machine."""
    cpu = max(os.sched_getaffinity(0))
    before: dict[int, set[int]] = {}
    threads = [
        int(task.name)
        for pid in (os.getpid(), *pids)
        for task in Path(f"/proc/{pid}/task").iterdir()
    ]
    try:
        for tid in threads:
            with contextlib.suppress(ProcessLookupError):
                before[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {cpu})
        yield cpu
    finally:
        for tid, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)
