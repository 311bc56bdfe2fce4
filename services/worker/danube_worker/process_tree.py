"""The worker's process tree: every process a job's steps started, found and stopped.

Linux only. The worker makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`), so a
process that leaves its step's session (`setsid`) or whose parent exits (a double fork)
is re-parented to the worker instead of to init, and stays a descendant the worker can
find by walking `/proc`. Stopping is SIGTERM to all, up to a grace period, then SIGKILL
to the rest, repeated until nothing is left, because a process may fork while it is
being stopped.

Asking first. Walking `/proc` reads every process of the machine (milliseconds each
time); most of the time the answer is "nothing", and one `waitid` says so exactly: a
process with no child at all has no descendant (every descendant hangs below some child),
and one whose children have none exited has no zombie to reap. So the walk happens only
when something is there to find.

Reaping. Orphans re-parented to the worker become the worker's zombies when they die;
nobody else waits for them, so `ProcessTree.reap_orphans` does. The step runner waits for
each shell it starts itself, by pid (`reserve`): the reaper never calls `waitpid(-1)`,
waits only for zombie children it has named from `/proc`, never for a reserved pid, nor
while a child is being started (`starting_child`, before its pid is known), so it cannot
steal a shell's exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from danube_shared.logs import get_logger

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
_PROC: Final = Path("/proc")
# How often a stop looks again at what is left; a process dies within microseconds of
# SIGKILL, so this bounds the latency of a stop, not its correctness.
_POLL_S: Final = 0.05
# SIGKILL cannot be refused, but a process in uninterruptible sleep (a hung NFS mount)
# dies only when the kernel lets it; the stop gives up after this and names the survivors.
_KILL_PATIENCE_S: Final = 10.0

log = get_logger(__name__)


def _prctl(option: int, arg: int | ctypes.c_int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    argument = ctypes.byref(arg) if isinstance(arg, ctypes.c_int) else ctypes.c_ulong(arg)
    if libc.prctl(option, argument, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def become_child_subreaper() -> None:
    """Make this process a child subreaper: orphaned descendants re-parent to it (Linux)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def is_child_subreaper() -> bool:
    """Whether this process is a child subreaper."""
    flag = ctypes.c_int(0)
    _prctl(_PR_GET_CHILD_SUBREAPER, flag)
    return flag.value != 0


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """A process, told apart from a later one that reuses its pid by its start time."""

    pid: int
    start_time: int  # clock ticks after boot, field 22 of /proc/<pid>/stat


@dataclass(frozen=True, slots=True)
class _ProcessEntry:
    identity: ProcessIdentity
    parent: int
    state: str


def _read_entry(pid: int) -> _ProcessEntry | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split at the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return _ProcessEntry(
        identity=ProcessIdentity(pid=pid, start_time=int(fields[19])),
        parent=int(fields[1]),
        state=fields[0].decode("ascii"),
    )


def _process_table() -> dict[int, _ProcessEntry]:
    """Every process of the machine, read from /proc: the costly walk."""
    table: dict[int, _ProcessEntry] = {}
    for path in _PROC.iterdir():
        if path.name.isdigit() and (entry := _read_entry(int(path.name))) is not None:
            table[entry.identity.pid] = entry
    return table


def _descendants(
    table: dict[int, _ProcessEntry], root: int, spared: frozenset[ProcessIdentity]
) -> list[_ProcessEntry]:
    children: dict[int, list[_ProcessEntry]] = {}
    for entry in table.values():
        children.setdefault(entry.parent, []).append(entry)
    found: list[_ProcessEntry] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child.identity in spared:
                continue  # it and everything below it belong to an earlier step
            found.append(child)
            pending.append(child.identity.pid)
    return found


def _has_children() -> bool:
    """Whether this process has any child, alive or a zombie (of any of its threads)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _an_exited_child() -> int | None:
    """The pid of one zombie child, left unreaped; None if no child has exited."""
    try:
        found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return None if found is None else found.si_pid


def _is_dead(entry: _ProcessEntry) -> bool:
    return entry.state in {"Z", "X", "x"}


def _send(identity: ProcessIdentity, signum: signal.Signals) -> None:
    """Signal the process only if its pid still names it (not a newer process)."""
    try:
        handle = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return
    try:
        # The pidfd pins the process the pid named when it was opened; checking the start
        # time afterwards proves that process is the one we mean.
        entry = _read_entry(identity.pid)
        if entry is not None and entry.identity == identity:
            signal.pidfd_send_signal(handle, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("process not ours to signal", pid=identity.pid, signal=signum.name)
    finally:
        os.close(handle)


class ProcessTree:
    """The descendants of this process: snapshot them, stop them, reap the orphans.

    Build one per worker process after `become_child_subreaper()`; everything runs on the
    event loop's thread.
    """

    def __init__(self) -> None:
        self._root = os.getpid()
        self._subreaper = is_child_subreaper()
        self._starting = 0
        self._reserved: set[int] = set()

    @contextlib.contextmanager
    def starting_child(self) -> Generator[None]:
        """Hold reaping back while a child is started and its pid is not yet known."""
        self._starting += 1
        try:
            yield
        finally:
            self._starting -= 1

    def reserve(self, pid: int) -> None:
        """Never reap `pid`: its starter waits for it (until `forget`, once it has)."""
        self._reserved.add(pid)

    def forget(self, pid: int) -> None:
        """`pid` was reaped by its starter; the number may now name someone else's orphan."""
        self._reserved.discard(pid)

    def live_descendants(
        self, spared: frozenset[ProcessIdentity] = frozenset()
    ) -> frozenset[ProcessIdentity]:
        """Live descendants, leaving out the spared processes and everything below them.

        Taken just before a step starts, it is what the step did not start.
        """
        return frozenset(self._live_top_down(spared))

    def _live_top_down(self, spared: frozenset[ProcessIdentity]) -> list[ProcessIdentity]:
        """Live descendants, each after its parent."""
        if not _has_children():
            return []
        return [
            entry.identity
            for entry in _descendants(_process_table(), self._root, spared)
            if not _is_dead(entry)
        ]

    def reap_orphans(self) -> list[int]:
        """Wait for every zombie child that is not reserved; return their pids."""
        if not self._subreaper or self._starting:
            # Without the subreaper flag every child is one we started and wait for.
            return []
        if _an_exited_child() is None:
            return []  # no zombie child: nothing to reap, no need to walk /proc
        reaped: list[int] = []
        for path in _PROC.iterdir():
            if not path.name.isdigit() or int(path.name) in self._reserved:
                continue
            entry = _read_entry(int(path.name))
            if entry is None or entry.parent != self._root or not _is_dead(entry):
                continue
            with contextlib.suppress(ChildProcessError):
                os.waitpid(entry.identity.pid, os.WNOHANG)
                reaped.append(entry.identity.pid)
        return reaped

    async def stop(
        self, *, spared: frozenset[ProcessIdentity], grace_s: float
    ) -> frozenset[ProcessIdentity]:
        """SIGTERM every descendant not spared, SIGKILL what is left after `grace_s`.

        Processes that appear while stopping (a fork, an orphan re-parented to us) are
        stopped too. Returns the processes still alive after SIGKILL (normally none).
        """
        loop = asyncio.get_running_loop()
        terminated: set[ProcessIdentity] = set()
        deadline = loop.time() + grace_s
        while (alive := self._live_after_reaping(spared)) and loop.time() < deadline:
            # Parents first: a shell whose foreground child died first would run its next
            # command in the moment before its own SIGTERM arrived.
            for identity in alive:
                if identity not in terminated:
                    _send(identity, signal.SIGTERM)
                    terminated.add(identity)
            await asyncio.sleep(_POLL_S)
        deadline = loop.time() + _KILL_PATIENCE_S
        while alive and loop.time() < deadline:
            for identity in alive:
                _send(identity, signal.SIGKILL)
            await asyncio.sleep(_POLL_S)
            alive = self._live_after_reaping(spared)
        if alive:
            log.error("processes survived SIGKILL", pids=sorted(i.pid for i in alive))
        return frozenset(alive)

    async def stop_all_descendants(self, *, grace_s: float) -> frozenset[ProcessIdentity]:
        """Stop everything this process started (at the end of a job, or of the worker)."""
        return await self.stop(spared=frozenset(), grace_s=grace_s)

    def _live_after_reaping(self, spared: frozenset[ProcessIdentity]) -> list[ProcessIdentity]:
        self.reap_orphans()
        return self._live_top_down(spared)
