"""Why the stack failed to come up, in words for the person who ran `danube up`.

The verdict comes from supervisord: each program's state, exit status and spawn error
through its XML-RPC interface (`ProcessInfo`). Two facts that interface cannot give are
read from supervisord's own log instead: the exit status of a program that exited within
its `startsecs` (supervisord then records BACKOFF and forgets the status), and an exit
followed by a respawn between two polls. The reason comes from the failed program's own
log: its last error line (a refusal is one), then the log's last lines.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from danube_cli.console import say, show
from danube_cli.errors import StackError
from danube_cli.supervisor_control import BACKOFF, EXITED, FATAL, ProcessInfo
from danube_shared.program import EXIT_FAILURE, EXIT_USAGE

LOG_TAIL_LINES = 8
# Program logs are read from their last 64 KiB at most.
_TAIL_BYTES = 64 * 1024


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, since: int = 0) -> list[str]:
    """The last `lines` lines of a log file written after offset `since` (none if it
    does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(since if since <= size else 0, size - _TAIL_BYTES))
            data = handle.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def last_error(lines: list[str]) -> str | None:
    """The last error among `lines`, as one readable sentence: an error-level JSON log
    line (a program's refusal to start is one), or a plain `PROG: error: ...` line (what
    argparse prints for a bad command line)."""
    for line in reversed(lines):
        if ": error: " in line and not line.startswith("{"):
            return line.strip()
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        fields = cast(dict[str, object], record)
        if fields.get("level") not in ("error", "critical"):
            continue
        extra = [
            f"{name}={value}"
            for name, value in fields.items()
            if name
            not in ("timestamp", "level", "logger", "message", "process", "exception", "exit_code")
        ]
        process = fields.get("process", "?")
        message = fields.get("message", "")
        return f"{process}: {message}" + (f" ({'; '.join(extra)})" if extra else "")
    return None


def report_log(path: Path, since: int = 0) -> None:
    """Show the operator a program's last words: its last error, then its log's tail."""
    tail = log_tail(path, since=since)
    if not tail:
        return
    error = last_error(tail)
    if error:
        say(error)
        if len(tail) == 1:
            return  # that line was all there was
    show(f"--- last lines of {path} ---")
    for line in tail:
        show(line)
    show("---")


_EXITED_LINE = re.compile(r"exited: (?P<name>\S+) \((?P<how>exit status (?P<status>\d+)|[^;)]+)")


@dataclass(frozen=True)
class ProgramExit:
    """One exit of a program, as supervisord logged it: `exited: keyd (exit status 2;
    not expected)` or `exited: api (terminated by SIGKILL; not expected)`."""

    name: str
    status: int | None  # None: killed by a signal
    how: str


def program_exits(supervisord_log: Path, since: int = 0) -> list[ProgramExit]:
    """The exits supervisord logged after offset `since` (of its last 64 KiB), oldest first.

    Only the log has these: XML-RPC forgets the status of a program that exits within
    `startsecs`, and a poll can miss a state that lasted less than the poll's period.
    """
    exits: list[ProgramExit] = []
    for line in log_tail(supervisord_log, 1000, since=since):
        match = _EXITED_LINE.search(line)
        if match:
            status = match["status"]
            exits.append(ProgramExit(match["name"], int(status) if status else None, match["how"]))
    return exits


def exit_status_from_log(supervisord_log: Path, name: str) -> int | None:
    """The exit status of `name`'s last exit, as supervisord logged it (None if it was
    killed by a signal or never exited)."""
    for program_exit in reversed(program_exits(supervisord_log)):
        if program_exit.name == name:
            return program_exit.status
    return None


def _exit_error(name: str, status: int | None, how: str, log: Path | None) -> StackError:
    code = EXIT_USAGE if status == EXIT_USAGE else EXIT_FAILURE
    verdict = "refused its config or key" if code == EXIT_USAGE else "failed"
    return StackError(f"{name} {verdict} while starting ({how})", code, log=log)


def exit_failure(program_exit: ProgramExit, log_dir: Path) -> StackError:
    """The error to end `danube up` with when a program exited before the stack was up."""
    return _exit_error(
        program_exit.name,
        program_exit.status,
        program_exit.how,
        log_dir / f"{program_exit.name}.log",
    )


def start_failure(info: ProcessInfo, supervisord_log: Path) -> StackError | None:
    """The error to end `danube up` with if `info` shows a long-running program failing
    to start."""
    if info.state not in (BACKOFF, EXITED, FATAL):
        return None
    log = Path(info.logfile) if info.logfile else None
    # supervisord's spawnerr reports an exit ("Exited too quickly", "Bad exit code 2");
    # other texts (command not found, unknown user) mean the program never ran.
    if info.spawnerr and not info.spawnerr.startswith(("Exited too quickly", "Bad exit code")):
        return StackError(f"supervisord could not start {info.name}: {info.spawnerr}", log=log)
    status: int | None = info.exitstatus
    if info.state != EXITED:
        status = exit_status_from_log(supervisord_log, info.name)
    how = f"exit status {status}" if status is not None else "killed by a signal"
    return _exit_error(info.name, status, how, log)


def migrator_failure(info: ProcessInfo) -> StackError | None:
    """The error to end `danube up` with if the one-shot migrator did not exit 0.

    It runs with `startsecs=0`, so supervisord keeps its exit status (EXITED); FATAL or
    BACKOFF with a spawn error means it never ran at all.
    """
    log = Path(info.logfile) if info.logfile else None
    if info.state in (FATAL, BACKOFF) and info.spawnerr:
        return StackError(f"supervisord could not start the migrator: {info.spawnerr}", log=log)
    if info.state != EXITED or info.exitstatus == 0:
        return None
    code = EXIT_USAGE if info.exitstatus == EXIT_USAGE else EXIT_FAILURE
    return StackError(
        f"the migrator failed with exit code {info.exitstatus} (see {info.logfile})",
        code,
        log=log,
    )


# The long-running programs `danube up` waits for; the migrator is a one-shot beside them.
SERVICES = ("keyd", "api")
MIGRATOR = "migrator"


def migrated(programs: dict[str, ProcessInfo]) -> bool:
    """Whether the migrator has exited 0 (the schema is at head)."""
    info = programs.get(MIGRATOR)
    return info is not None and info.state == EXITED and info.exitstatus == 0


def _tolerated(program_exit: ProgramExit, *, migration_done: bool) -> bool:
    # The API exits 1 when the schema is still not at head after its wait; supervisord
    # starts it again. That is expected while the migrator runs, and only then.
    return program_exit.name == "api" and program_exit.status == 1 and not migration_done


def startup_failures(
    programs: dict[str, ProcessInfo], supervisord_log: Path, since: int, log_dir: Path
) -> list[StackError]:
    """Every reason, oldest first, why the stack cannot come up: the migrator failed, a
    service exited (read from supervisord's log after offset `since`, in order, so that
    an API exit is judged by whether the migration had finished before it), or supervisord
    cannot run a service at all."""
    failures: list[StackError] = []
    migrator = programs.get(MIGRATOR)
    if migrator is not None and (failure := migrator_failure(migrator)) is not None:
        failures.append(failure)
    migration_done = False
    last_exit_tolerated: dict[str, bool] = {}
    for program_exit in program_exits(supervisord_log, since):
        if program_exit.name == MIGRATOR:
            migration_done = migration_done or program_exit.status == 0
            continue
        if program_exit.name not in SERVICES:
            continue
        tolerated = _tolerated(program_exit, migration_done=migration_done)
        last_exit_tolerated[program_exit.name] = tolerated
        if not tolerated:
            failures.append(exit_failure(program_exit, log_dir))
    for name in SERVICES:
        info = programs.get(name)
        if info is None or (
            info.state in (BACKOFF, EXITED) and last_exit_tolerated.get(name, False)
        ):
            continue  # about to be started again after a tolerated exit
        if (failure := start_failure(info, supervisord_log)) is not None:
            failures.append(failure)
    return failures
