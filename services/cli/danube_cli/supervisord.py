"""Running supervisord for `danube up`: its one config (deploy/supervisord.conf), the
environment that config expands, and the process itself, started in the foreground and
stopped with everything it runs.

The XML-RPC client (`supervisor_control`, which imports supervisor's own modules) is
imported only once supervisord is spawned, so that the import overlaps supervisord's
start instead of delaying it.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from danube_cli.console import say
from danube_cli.errors import StackError
from danube_cli.home import Layout

if TYPE_CHECKING:
    from danube_cli.supervisor_control import ProcessInfo

# The programs supervisord runs for `danube up`, by their console scripts.
PROGRAM_FILES = ("danube-migrate", "danube-keyd", "danube-api", "danube-worker")
# supervisord's own stop of the migrator, keyd and the API; the workers' comes on top.
STOP_TIMEOUT_S = 45.0
DEFAULT_WORKERS = 1
DEFAULT_KILL_GRACE_S = 10.0
# A stopping worker's time to finish its job (its retries end after 10 s) and exit.
WORKER_REPORT_S = 20

_PR_SET_PDEATHSIG = 1


def supervisord_config() -> Path:
    """deploy/supervisord.conf: beside the sources in a checkout (and an editable
    install), else the copy shipped inside the wheel."""
    checkout = Path(__file__).resolve().parents[3] / "deploy" / "supervisord.conf"
    if checkout.is_file():
        return checkout
    shipped = Path(str(resources.files("danube_cli") / "supervisord.conf"))
    if shipped.is_file():
        return shipped
    raise StackError(
        f"supervisord.conf not found (looked at {checkout} and {shipped}); reinstall Danube"
    )


def programs_dir() -> Path:
    """The directory holding the console scripts supervisord runs."""
    candidates = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    found = shutil.which("danube-keyd")
    if found:
        candidates.append(Path(found).parent)
    for directory in candidates:
        if all((directory / name).is_file() for name in PROGRAM_FILES):
            return directory
    raise StackError(
        f"cannot find {', '.join(PROGRAM_FILES)} (looked in "
        f"{', '.join(str(c) for c in candidates)}); is Danube installed (`uv sync`)?"
    )


def worker_stop_wait_s(kill_grace_s: float) -> int:
    """supervisord's `stopwaitsecs` for a worker: a stopping worker stops its step and
    then the job's leftovers (each up to `kill_grace_s`), then reports the job."""
    return 2 * math.ceil(kill_grace_s) + WORKER_REPORT_S


def supervisor_environment(
    layout: Layout,
    bin_dir: Path,
    *,
    base: Mapping[str, str],
    workers: int = DEFAULT_WORKERS,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
) -> dict[str, str]:
    """The variables deploy/supervisord.conf expands, for a stack under `layout` with
    `workers` workers (0 for none) whose `worker.kill_grace_s` is `kill_grace_s`.

    The accounts are this process's uid: supervisord, not being root, must not switch
    accounts, and "switching" to the uid it already runs as is a no-op it accepts.
    """
    env = dict(base)
    uid = str(os.getuid())
    env.update(
        {
            "DANUBE_CONFIG": str(layout.config),
            "DNB_BIN": str(bin_dir),
            "DNB_RUN_DIR": str(layout.run_dir),
            "DNB_LOG_DIR": str(layout.log_dir),
            "DNB_KEYD_USER": uid,
            "DNB_API_USER": uid,
            "DNB_WORKER_USER": uid,
            "DNB_WORKERS": str(workers),
            # Started by `danube up` after the bootstrap has written DIR/worker.token.
            "DNB_WORKER_AUTOSTART": "false",
            "DNB_WORKER_STOP_WAIT_S": str(worker_stop_wait_s(kill_grace_s)),
        }
    )
    return env


def supervisord_command() -> list[str]:
    """supervisord in the foreground on the one config, from this environment."""
    return [
        sys.executable,
        "-m",
        "supervisor.supervisord",
        "--nodaemon",
        "--silent",
        "--configuration",
        str(supervisord_config()),
    ]


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if `danube up` dies, so that a killed
    `danube up` still stops supervisord, and supervisord stops its programs."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is dead, only not reaped yet)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat_line.rpartition(")")[2].split()[0] not in ("Z", "X")


class Supervisor:
    """The supervisord that `danube up` runs in the foreground, and the way to stop it."""

    def __init__(self, layout: Layout, env: Mapping[str, str]) -> None:
        self.layout = layout
        self.log = layout.log_dir / "supervisord.log"
        # Where this supervisord's lines begin in its (appended) log.
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.process = subprocess.Popen(  # noqa: S603 -- supervisord from our own environment
            supervisord_command(),
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=layout.home,
            umask=0o027,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 -- no threads exist yet
        )
        from danube_cli.supervisor_control import SupervisorClient

        self.client = SupervisorClient(layout.supervisor_socket)
        # The workers stop first, each within its stopwaitsecs, all at once.
        self.stop_timeout_s = STOP_TIMEOUT_S + int(env.get("DNB_WORKER_STOP_WAIT_S", "0"))
        # Programs seen running, so that none can outlive a stop unnoticed.
        self.known_pids: dict[int, str] = {}

    def exited(self) -> int | None:
        return self.process.poll()

    def programs(self) -> dict[str, ProcessInfo]:
        infos = {info.name: info for info in self.client.processes()}
        for info in infos.values():
            if info.pid:
                self.known_pids[info.pid] = info.name
        return infos

    def stop(self) -> None:
        """SIGTERM supervisord and wait; it stops the API, then keyd (and the migrator,
        if it still runs). Whatever is still there after the timeout is killed, process
        group and all."""
        from danube_cli.supervisor_control import SupervisorUnavailable

        if self.process.poll() is None:
            with contextlib.suppress(SupervisorUnavailable):
                self.programs()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                say("supervisord did not stop in time; killing it")
                self.process.kill()
                self.process.wait()
        for pid, name in self.known_pids.items():
            if alive(pid):
                say(f"{name} (pid {pid}) outlived supervisord; killing it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


def running_supervisor(layout: Layout) -> bool:
    """Whether a supervisord answers on DIR's socket (a stale socket of a stack killed
    earlier does not, and supervisord reuses it)."""
    if not layout.supervisor_socket.exists():
        return False
    from danube_cli.supervisor_control import SupervisorClient, SupervisorUnavailable

    try:
        SupervisorClient(layout.supervisor_socket, timeout=1.0).pid()
    except SupervisorUnavailable:
        return False
    return True
