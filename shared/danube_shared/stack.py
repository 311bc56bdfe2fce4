"""`danube up` and `danube status`: the whole stack on one host, in the foreground.

`danube up` keeps its state in one directory (DIR: `--home`, else `$DANUBE_HOME`, else
`./.danube`): `danube.toml`, `data/danube.db`, `keys/encryption.key`, `run/` (keyd's
sockets, supervisord's socket and pid) and `log/` (one file per program). It writes the
config and the key on first run only, runs the migrator and waits for it, then runs
supervisord in the foreground on `deploy/supervisord.conf` (the same file a host install
uses) with keyd and the API, and prints the API URL once `/readyz` answers 200. A program
that fails while the stack comes up ends `danube up` with that program's own words (the
tail of its log) and its verdict: exit 2 for a refused config or key, else 1. SIGINT or
SIGTERM stops supervisord, which stops keyd and the API; then `danube up` exits 0.

This process never reads the key: it asks `danube_keyd.keyfile` to write a new one when
there is none, and keyd alone opens it.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import cast

from danube_shared.config import Settings, load_settings
from danube_shared.errors import ConfigError, KeyFileError
from danube_shared.keyd_protocol import socket_dir_problem
from danube_shared.program import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from danube_shared.supervisor_control import (
    BACKOFF,
    EXITED,
    FATAL,
    ProcessInfo,
    SupervisorClient,
    SupervisorUnavailable,
)

PROG = "danube up"
DEFAULT_HOME = Path(".danube")
CONFIG_NAME = "danube.toml"
SUPERVISOR_SOCKET = "supervisor.sock"
# sun_path holds 108 bytes including the terminating NUL.
# The long-running programs supervisord runs for `danube up` (the migrator is run before).
SERVICES = ("keyd", "api")
PROGRAM_FILES = ("danube-migrate", "danube-keyd", "danube-api")

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 45.0
POLL_S = 0.1
LOG_TAIL_LINES = 8

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Layout:
    """Where `danube up` keeps things for one DIR."""

    home: Path
    config: Path
    run_dir: Path
    log_dir: Path

    @classmethod
    def for_home(cls, home: Path, config: Path | None = None) -> Layout:
        home = home.absolute()
        return cls(
            home=home,
            config=(config if config is not None else home / CONFIG_NAME).absolute(),
            run_dir=home / "run",
            log_dir=home / "log",
        )

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / SUPERVISOR_SOCKET


class StackError(Exception):
    """`danube up` cannot go on; `exit_code` is what it exits with, and `log` the log
    file whose last lines say why."""

    def __init__(
        self, message: str, exit_code: int = EXIT_FAILURE, log: Path | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.log = log
        # Where this run's part of `log` begins (the files are appended to across runs).
        self.log_offset = 0


def resolve_home(home: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """`--home`, else `$DANUBE_HOME`, else `./.danube`."""
    env = os.environ if environ is None else environ
    if home is not None:
        return home
    if env.get("DANUBE_HOME"):
        return Path(env["DANUBE_HOME"])
    return DEFAULT_HOME


def check_home_fits(home: Path) -> None:
    """keyd's sockets live in DIR/run; refuse a DIR whose socket paths cannot be bound."""
    problem = socket_dir_problem(home.absolute() / "run")
    if problem is not None:
        raise StackError(
            f"{problem}: choose a shorter --home (for example /tmp/danube)", EXIT_USAGE
        )


def supervisord_config() -> Path:
    """deploy/supervisord.conf: beside the sources in a checkout (and an editable
    install), else the copy shipped inside the wheel."""
    checkout = Path(__file__).resolve().parents[2] / "deploy" / "supervisord.conf"
    if checkout.is_file():
        return checkout
    shipped = Path(str(resources.files("danube_shared") / "supervisord.conf"))
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


def supervisor_environment(
    layout: Layout, bin_dir: Path, *, migrate_autostart: bool, base: Mapping[str, str]
) -> dict[str, str]:
    """The variables deploy/supervisord.conf expands, for a stack under `layout`.

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
            "DNB_MIGRATE_AUTOSTART": "true" if migrate_autostart else "false",
        }
    )
    return env


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(value, ensure_ascii=False)


def default_config_text(home: Path) -> str:
    return f"""\
# Written by `danube up` on its first run in this directory; edit freely.
# Every key and its default: docs/architecture.md. Environment variables
# DANUBE_<SECTION>__<KEY> override this file.

[log]
level = "info"
format = "json"

[database]
path = {_toml_string(str(home / "data" / "danube.db"))}

[keyd]
key_path = {_toml_string(str(home / "keys" / "encryption.key"))}
socket_dir = {_toml_string(str(home / "run"))}

[api]
host = "127.0.0.1"
port = 8480
"""


def _make_dir(path: Path, mode: int) -> None:
    if not path.is_dir():
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        path.chmod(mode)  # mkdir's mode is filtered by the umask


def prepare_home(layout: Layout, *, write_config: bool) -> None:
    """Create DIR (0700) with its `log/` and, on first run, its `danube.toml`."""
    _make_dir(layout.home, 0o700)
    _make_dir(layout.log_dir, 0o700)
    _make_dir(layout.run_dir, 0o750)
    if write_config and not layout.config.exists():
        temporary = layout.config.with_name(f".{layout.config.name}.tmp")
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(default_config_text(layout.home))
        temporary.replace(layout.config)
        _say(f"wrote {layout.config}")


def ensure_key(settings: Settings, config: Path) -> None:
    """Write a key at `keyd.key_path` unless one is there; never read an existing one.

    A missing key beside an existing database is a lost key, not a first run: a new key
    would leave every stored secret unreadable, so that takes a deliberate `danube keygen`.
    """
    path = settings.keyd.key_path
    if path.exists() or path.is_symlink():
        return
    database = settings.database.path
    if database.exists():
        raise StackError(
            f"the key file {path} is missing but the database {database} exists: restore "
            "the key from your backup (docs/operations.md). To start over with a new key, "
            "leaving every stored secret unreadable, run `danube keygen --config "
            f"{config}` and enter the secrets again",
            EXIT_USAGE,
        )
    from danube_keyd.keyfile import write_new_key

    try:
        key_id = write_new_key(path)
    except FileExistsError:
        return  # written meanwhile by someone else: theirs stands
    except KeyFileError as exc:
        raise StackError(f"cannot write a key: {exc.message}", EXIT_USAGE) from None
    except OSError as exc:
        raise StackError(f"cannot write a key at {path}: {exc.strerror}") from None
    _say(
        f"generated a new key at {path} (key id {key_id.hex()}); back it up apart from "
        "the database: without it no stored secret can be read (docs/operations.md)"
    )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, since: int = 0) -> list[str]:
    """The last `lines` lines of a log file written after offset `since` (none if it
    does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(since if since <= size else 0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)  # noqa: T201 -- the command talks to its operator


def last_error(lines: list[str]) -> str | None:
    """The last error among `lines`, as one readable sentence: an error-level JSON log
    line, or the `PROG: error: ...` line a program prints when it refuses to start."""
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
            if name not in ("timestamp", "level", "logger", "message", "process", "exception")
        ]
        process = fields.get("process", "?")
        message = fields.get("message", "")
        return f"{process}: {message}" + (f" ({'; '.join(extra)})" if extra else "")
    return None


def _report_log(path: Path, since: int = 0) -> None:
    """Show the operator a program's last words: its last error, then its log's tail."""
    tail = log_tail(path, since=since)
    if not tail:
        return
    error = last_error(tail)
    if error:
        print(f"{PROG}: {error}", file=sys.stderr)  # noqa: T201 -- the program's own words
        if len(tail) == 1:
            return  # that line was all there was
    print(f"--- last lines of {path} ---", file=sys.stderr)  # noqa: T201 -- same
    for line in tail:
        print(line, file=sys.stderr)  # noqa: T201 -- same
    print("---", file=sys.stderr, flush=True)  # noqa: T201 -- same


class _StopRequest:
    """Set by SIGINT, SIGTERM or SIGHUP; the main loop polls it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.event.is_set():
            self.signal_name = signal.Signals(signum).name
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Generator[None]:
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self.handle) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.event.is_set()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if `danube up` dies, so that a killed
    `danube up` still stops supervisord, and supervisord stops its programs."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_migrator(layout: Layout, bin_dir: Path, env: Mapping[str, str], stop: _StopRequest) -> None:
    """Run `danube-migrate` once, its output appended to log/migrator.log, and wait."""
    log_path = layout.log_dir / "migrator.log"
    _say("migrating the database")
    with os.fdopen(
        os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640), "ab"
    ) as log_file:
        process = subprocess.Popen(  # noqa: S603 -- our own program, by absolute path
            [str(bin_dir / "danube-migrate"), "--config", str(layout.config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=layout.home,
            umask=0o077,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 -- no threads exist yet
        )
        while (code := process.poll()) is None:
            if stop.requested:
                process.terminate()
                code = process.wait()
                break
            stop.event.wait(POLL_S)
    if stop.requested:
        raise _Interrupted
    if code != 0:
        raise StackError(
            f"the migrator failed with exit code {code}",
            EXIT_USAGE if code == EXIT_USAGE else EXIT_FAILURE,
            log=log_path,
        )


class _Interrupted(Exception):
    """A stop signal arrived before the stack was up."""


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


class Supervisor:
    """The supervisord that `danube up` runs in the foreground, and the way to stop it."""

    def __init__(self, layout: Layout, env: Mapping[str, str]) -> None:
        self.layout = layout
        self.client = SupervisorClient(layout.supervisor_socket)
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
        """SIGTERM supervisord and wait; it stops the API, then keyd. Whatever is still
        there after the timeout is killed, process group and all."""
        if self.process.poll() is None:
            with contextlib.suppress(SupervisorUnavailable):
                self.programs()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _say("supervisord did not stop in time; killing it")
                self.process.kill()
                self.process.wait()
        for pid, name in self.known_pids.items():
            if _alive(pid):
                _say(f"{name} (pid {pid}) outlived supervisord; killing it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
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


def _probe_host(host: str) -> str:
    """Where to reach an API bound to `host` from this machine."""
    if host in ("0.0.0.0", ""):  # noqa: S104 -- comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def api_url(settings: Settings) -> str:
    host = _probe_host(settings.api.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.port}"


def readyz(settings: Settings, timeout: float = 1.0) -> tuple[int, str]:
    """(status, body) of GET /readyz; (0, why) when nothing answers."""
    connection = http.client.HTTPConnection(
        _probe_host(settings.api.host), settings.api.port, timeout=timeout
    )
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        return response.status, response.read(4096).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, str(exc)
    finally:
        connection.close()


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

    supervisord's log is the one record of every exit: its XML-RPC forgets the status of
    a program that exits within `startsecs`, and a poll can miss a state that lasted less
    than the poll's period.
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
    """The error to end `danube up` with if `info` shows a program failing to start."""
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


def wait_until_ready(supervisor: Supervisor, settings: Settings, stop: _StopRequest) -> None:
    """Return once /readyz is 200; raise if a program fails, supervisord dies, a stop is
    requested, or the deadline passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_answer = "no answer yet"
    while True:
        if stop.requested:
            raise _Interrupted
        code = supervisor.exited()
        if code is not None:
            raise StackError(
                f"supervisord exited with code {code} while starting", log=supervisor.log
            )
        try:
            programs = supervisor.programs()
        except SupervisorUnavailable:
            programs = {}  # not listening yet
        failures = [
            exit_failure(program_exit, supervisor.layout.log_dir)
            for program_exit in program_exits(supervisor.log, supervisor.log_offset)
            if program_exit.name in SERVICES
        ]
        failures += [
            failure
            for info in programs.values()
            if info.name in SERVICES
            and (failure := start_failure(info, supervisor.log)) is not None
        ]
        if failures:
            supervisor.stop()  # flushes the program's log before it is shown
            raise failures[0]
        if programs:
            # /readyz waits up to keyd's deadline before it answers 503 naming keyd.
            status, body = readyz(settings, timeout=settings.keyd.request_timeout_ms / 1000 + 1)
            if status == 200:
                return
            last_answer = f"{status} {body}" if status else body
        if time.monotonic() > deadline:
            raise StackError(
                f"the API was not ready within {READY_TIMEOUT_S:.0f} s (last /readyz: "
                f"{last_answer}); see the logs in {supervisor.layout.log_dir}"
            )
        stop.event.wait(POLL_S)


def watch(supervisor: Supervisor, stop: _StopRequest) -> int:
    """While the stack runs: tell the operator when a program restarts or stays down.
    Returns when a stop is requested (EXIT_OK) or supervisord dies (EXIT_FAILURE)."""
    pids: dict[str, int] = {}
    down: set[str] = set()
    while not stop.event.wait(0.5):
        code = supervisor.exited()
        if code is not None:
            _say(f"supervisord exited on its own with code {code}")
            return EXIT_FAILURE
        try:
            programs = supervisor.programs()
        except SupervisorUnavailable:
            continue
        for name in SERVICES:
            info = programs.get(name)
            if info is None:
                continue
            if info.pid and pids.get(name, info.pid) != info.pid:
                _say(f"{name} was restarted by supervisord (pid {pids[name]} -> {info.pid})")
            if info.pid:
                pids[name] = info.pid
            if info.state not in (FATAL, EXITED):
                down.discard(name)
            elif name not in down:
                down.add(name)
                _say(
                    f"{name} is down and supervisord will not restart it ({info.state}); "
                    f"see {info.logfile}, then `danube status`"
                )
    return EXIT_OK


def run_up(config: Path | None, home: Path | None) -> int:
    """`danube up [--config PATH] [--home DIR]`."""
    stop = _StopRequest()
    with stop.installed():
        try:
            return _up(config, home, stop)
        except StackError as exc:
            _say(f"error: {exc.message}")
            if exc.log is not None:
                _report_log(exc.log, exc.log_offset)
            return exc.exit_code


def _up(config: Path | None, home: Path | None, stop: _StopRequest) -> int:
    layout = Layout.for_home(resolve_home(home), config)
    check_home_fits(layout.home)
    try:
        prepare_home(layout, write_config=config is None)
    except OSError as exc:
        raise StackError(f"cannot prepare {layout.home}: {exc}") from None
    marks = {path: path.stat().st_size for path in layout.log_dir.glob("*.log")}
    try:
        return _start_and_run(layout, stop)
    except StackError as exc:
        if exc.log is not None:
            exc.log_offset = marks.get(exc.log, 0)
        raise


def _start_and_run(layout: Layout, stop: _StopRequest) -> int:
    try:
        settings = load_settings(layout.config)
    except ConfigError as exc:
        raise StackError(f"config invalid: {exc}", EXIT_USAGE) from None
    try:
        _make_dir(settings.database.path.parent, 0o700)
        _make_dir(settings.keyd.socket_dir, 0o750)
    except OSError as exc:
        raise StackError(f"cannot create a directory the config names: {exc}") from None
    bin_dir = programs_dir()
    ensure_key(settings, layout.config)
    env = supervisor_environment(layout, bin_dir, migrate_autostart=False, base=os.environ)
    # Stale sockets of a stack killed earlier are reused by supervisord; a live one is not.
    if layout.supervisor_socket.exists():
        with contextlib.suppress(SupervisorUnavailable):
            SupervisorClient(layout.supervisor_socket, timeout=1.0).pid()
            raise StackError(
                f"a stack is already running in {layout.home} (`danube status --home "
                f"{layout.home}`)"
            )
    try:
        run_migrator(layout, bin_dir, env, stop)
    except _Interrupted:
        _say(f"stopped by {stop.signal_name} before the migration finished")
        return EXIT_OK

    _say(f"starting keyd and the API under supervisord (logs in {layout.log_dir})")
    supervisor = Supervisor(layout, env)
    try:
        try:
            # Polling supervisord's socket also ends the up-to-a-second wait of its main
            # loop before its first spawn.
            wait_until_ready(supervisor, settings, stop)
        except _Interrupted:
            _say(f"stopping ({stop.signal_name})")
            return EXIT_OK
        print(  # noqa: T201 -- the one line of output the command exists for
            f"Danube is ready at {api_url(settings)} (state in {layout.home}; Ctrl-C stops it)",
            flush=True,
        )
        code = watch(supervisor, stop)
        if stop.requested:
            _say(f"stopping ({stop.signal_name})")
        return code
    finally:
        supervisor.stop()
        if stop.requested:
            _say("stopped")


def run_status(config: Path | None, home: Path | None) -> int:
    """`danube status [--home DIR]`: supervisorctl status of DIR's supervisord.
    (`--config` is accepted, as by every command, but the stack is found by DIR.)"""
    del config
    layout = Layout.for_home(resolve_home(home))
    if not layout.supervisor_socket.exists():
        print(  # noqa: T201 -- the command's output
            f"danube status: no stack running in {layout.home} (no {layout.supervisor_socket})",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        bin_dir = programs_dir()
        conf = supervisord_config()
    except StackError as exc:
        print(f"danube status: error: {exc.message}", file=sys.stderr)  # noqa: T201 -- the command's output
        return EXIT_FAILURE
    env = supervisor_environment(layout, bin_dir, migrate_autostart=False, base=os.environ)
    completed = subprocess.run(  # noqa: S603 -- supervisorctl from our own environment
        [
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "--configuration",
            str(conf),
            "--serverurl",
            f"unix://{layout.supervisor_socket}",
            "status",
        ],
        env=env,
        check=False,
    )
    return completed.returncode
