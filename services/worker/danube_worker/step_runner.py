"""Running one step of a job: its shell, its environment, its output, how it ends.

A step is `/bin/sh -c COMMAND` in the job's workspace, in a new session, with stdin
`/dev/null`, stdout and stderr merged into one pipe, and exactly the environment
`step_environment` builds (DESIGN 12). Output goes to the caller's callback as it
arrives. The step is over when its shell exits, not at end-of-file: a background process
may hold the pipe open for ever. At the shell's exit the runner reads what is already in
the pipe, then closes its end. On timeout or cancel, everything the step started (found
through the worker's `ProcessTree`, escapees included) gets SIGTERM, then SIGKILL after
the grace period, before the step's result is returned.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import os
import struct
import subprocess
import termios
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from danube_shared.errors import InvalidInput
from danube_worker.process_tree import ProcessTree

OutputSink = Callable[[bytes], Awaitable[None]]

# The variables DESIGN 12 gives every step; a secret of the same name does not replace them.
RESERVED_NAMES: Final = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "CI",
        "DANUBE_JOB_ID",
        "DANUBE_JOB_NUMBER",
        "DANUBE_PIPELINE_ID",
        "DANUBE_STEP_NAME",
    }
)
_READ_SIZE: Final = 65536
# Orphans left by a step die and become the worker's zombies while later steps run.
_REAP_EVERY_S: Final = 1.0


def step_environment(
    *,
    path: str,
    workspace: Path,
    job_id: str,
    job_number: int,
    pipeline_id: str,
    step_name: str,
    secrets: Mapping[str, bytes],
) -> dict[str, str]:
    """The whole environment of a step (DESIGN 12): nothing of the worker's own.

    Secrets are given by name with their values as UTF-8 text; one named like a reserved
    variable (`RESERVED_NAMES`) is left out, so a secret cannot redirect `PATH` or `HOME`.
    """
    environment: dict[str, str] = {}
    for name, value in secrets.items():
        if name in RESERVED_NAMES:
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            # `from None`: the decode error holds the value's bytes.
            raise InvalidInput(f"secret {name} is not UTF-8 text") from None
        if "\0" in text:
            raise InvalidInput(f"secret {name} holds a NUL byte, which no environment can")
        environment[name] = text
    environment.update(
        {
            "PATH": path,
            "HOME": str(workspace),
            "LANG": "C.UTF-8",
            "CI": "true",
            "DANUBE_JOB_ID": job_id,
            "DANUBE_JOB_NUMBER": str(job_number),
            "DANUBE_PIPELINE_ID": pipeline_id,
            "DANUBE_STEP_NAME": step_name,
        }
    )
    return environment


class StepEnd(enum.StrEnum):
    """How a step ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class StepResult:
    """A step's end and its shell's exit code (128+N for signal N; None when stopped)."""

    end: StepEnd
    exit_code: int | None

    @property
    def status(self) -> str:
        """The step's status in the API's terms: a timed-out step is `failed`."""
        return "failed" if self.end is StepEnd.TIMED_OUT else self.end.value


class StepRunner:
    """Runs steps one at a time in this worker's process tree."""

    def __init__(self, *, tree: ProcessTree, kill_grace_s: float) -> None:
        self._tree = tree
        self._kill_grace_s = kill_grace_s

    async def run(
        self,
        command: str,
        *,
        workspace: Path,
        environment: Mapping[str, str],
        timeout_s: float,
        cancel: asyncio.Event,
        on_output: OutputSink,
    ) -> StepResult:
        """Run `command` to its shell's exit, its timeout, or `cancel` being set.

        If `on_output` raises, the step is stopped and the error propagates.
        """
        spared = self._tree.live_descendants()
        read_end, write_end = os.pipe()
        try:
            with self._tree.starting_child():
                shell = _start_shell(command, workspace, environment, write_end)
                self._tree.reserve(shell.pid)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the shell holds its own copy; ours would delay EOF
        shell_exit = _ShellExit(shell, self._tree)
        pump = _OutputPump(read_end, on_output)
        pumping = asyncio.create_task(pump.run())
        try:
            end = await self._wait_for_end(shell_exit.returncode, pumping, timeout_s, cancel)
            if end is not None:
                await self._tree.stop(spared=spared, grace_s=self._kill_grace_s)
            returncode = await asyncio.shield(shell_exit.returncode)
            pump.shell_exited()
            await pumping
        except BaseException:
            # Cancelled, or the sink failed: leave nothing of the step behind.
            pumping.cancel()
            await asyncio.wait({pumping})
            await asyncio.shield(self._tree.stop(spared=spared, grace_s=0))
            raise
        finally:
            pump.close()
        if end is not None:
            return StepResult(end=end, exit_code=None)
        exit_code = 128 - returncode if returncode < 0 else returncode
        return StepResult(
            end=StepEnd.SUCCEEDED if exit_code == 0 else StepEnd.FAILED, exit_code=exit_code
        )

    async def _wait_for_end(
        self,
        shell_exit: asyncio.Future[int],
        pumping: asyncio.Task[None],
        timeout_s: float,
        cancel: asyncio.Event,
    ) -> StepEnd | None:
        """None when the shell exits by itself, else why the step must be stopped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        cancelled = asyncio.ensure_future(cancel.wait())
        waiting: set[asyncio.Future[Any]] = {shell_exit, cancelled, pumping}
        try:
            while True:
                await asyncio.wait(
                    waiting,
                    timeout=min(_REAP_EVERY_S, max(0.0, deadline - loop.time())),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if shell_exit.done():
                    return None
                if pumping.done():
                    pumping.result()  # the sink's error; the caller stops the step
                    # End of file (the shell closes its output a moment before it is a
                    # zombie): waiting on the done pump again would spin the loop.
                    waiting.discard(pumping)
                if cancelled.done():
                    return StepEnd.CANCELLED
                if loop.time() >= deadline:
                    return StepEnd.TIMED_OUT
                self._tree.reap_orphans()
        finally:
            cancelled.cancel()


def _start_shell(
    command: str, workspace: Path, environment: Mapping[str, str], output: int
) -> subprocess.Popen[bytes]:
    """`/bin/sh -c command` in a new session, stdin `/dev/null`, stdout and stderr into
    `output`. Fork and exec hold the event loop as long as asyncio's own subprocess start
    would; the wait for the exit is `_ShellExit`'s, off the loop's critical path."""
    return subprocess.Popen(  # noqa: S603 -- running the step's command is the point
        ["/bin/sh", "-c", command],
        cwd=workspace,
        env=dict(environment),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class _ShellExit:
    """The shell's exit code, noticed through its pidfd (readable once the shell has
    exited) and then reaped by pid: no thread per child and no polling, so a step is over
    the moment its shell is."""

    def __init__(self, shell: subprocess.Popen[bytes], tree: ProcessTree) -> None:
        self._shell = shell
        self._tree = tree
        self._loop = asyncio.get_running_loop()
        self.returncode: asyncio.Future[int] = self._loop.create_future()
        # The shell is our child, not reaped yet: its pid cannot name another process.
        self._pidfd = os.pidfd_open(shell.pid)
        self._loop.add_reader(self._pidfd, self._exited)

    def _exited(self) -> None:
        returncode = self._shell.poll()  # reaps it; it has exited, so this does not block
        if returncode is None:
            return  # not a zombie yet (the whole thread group has not exited): wait on
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._tree.forget(self._shell.pid)
        if not self.returncode.done():
            self.returncode.set_result(returncode)


class _OutputPump:
    """Reads the step's pipe and feeds the sink, until the shell has exited and what it
    had written is delivered (or end-of-file, if every writer is gone)."""

    def __init__(self, read_end: int, sink: OutputSink) -> None:
        os.set_blocking(read_end, False)
        self._fd = read_end
        self._sink = sink
        self._wakeup: asyncio.Future[None] | None = None
        self._left_after_exit: int | None = None

    def shell_exited(self) -> None:
        """From now on, read only the bytes already in the pipe, then stop."""
        buffered = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
        self._left_after_exit = int(struct.unpack("i", buffered)[0])
        self._wake()

    async def run(self) -> None:
        while self._left_after_exit != 0:
            wanted = _READ_SIZE if self._left_after_exit is None else self._left_after_exit
            try:
                chunk = os.read(self._fd, min(wanted, _READ_SIZE))
            except BlockingIOError:
                await self._until_readable()
                continue
            if not chunk:
                return  # every writer is gone
            if self._left_after_exit is not None:
                self._left_after_exit -= len(chunk)
            await self._sink(chunk)

    async def _until_readable(self) -> None:
        # Registered only while waiting: the selector is level-triggered, and a reader
        # left registered while the sink is slow would fire on every turn of the loop.
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        loop.add_reader(self._fd, self._wake)
        try:
            await self._wakeup
        finally:
            loop.remove_reader(self._fd)
            self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def close(self) -> None:
        os.close(self._fd)
