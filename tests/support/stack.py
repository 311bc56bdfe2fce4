"""Start the whole stack as an operator does (`danube up --home DIR`, or supervisord on
deploy/supervisord.conf as a host install runs it), look inside it, and make sure that
every process it started is gone afterwards, whatever happened.

Every stack lives in a short directory under /tmp (keyd's ipc:// socket paths must fit in
107 bytes), listens on a free loopback port, and is found again at teardown by that
directory: each of its processes names it on its command line or in its environment
(`DANUBE_CONFIG=DIR/danube.toml`), so none escapes by being reparented.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import zmq

from danube_cli.home import Layout
from danube_cli.supervisor_control import (
    RUNNING,
    ProcessInfo,
    SupervisorClient,
    SupervisorUnavailable,
)
from danube_cli.supervisord import supervisor_environment, supervisord_command
from tests.support.isolation import free_port, program_environment
from tests.support.processes import live_pids_where, proc_bytes

BIN = Path(sysconfig.get_path("scripts"))
DANUBE = BIN / "danube"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# The deadline the API is given for each keyd request in these tests (config default: 2000).
KEYD_TIMEOUT_MS = 1000


def new_home() -> Path:
    return Path(tempfile.mkdtemp(dir="/tmp", prefix="de"))


def write_config(
    home: Path,
    port: int,
    *,
    keyd_timeout_ms: int = KEYD_TIMEOUT_MS,
    log_level: str = "info",
    extra: str = "",
    worker: str = "",
) -> Path:
    """A danube.toml like the one `danube up` writes, on `port`, with a short keyd deadline;
    `extra` goes into `[api]`, `worker` into `[worker]`."""
    path = home / "danube.toml"
    path.write_text(
        f"""\
[log]
level = "{log_level}"
format = "json"

[database]
path = "{home}/data/danube.db"

[keyd]
key_path = "{home}/keys/encryption.key"
socket_dir = "{home}/run"
audit_path = "{home}/log/keyd-audit.log"
request_timeout_ms = {keyd_timeout_ms}

[api]
host = "127.0.0.1"
port = {port}
{extra}
[worker]
token_file = "{home}/worker.token"
workdir = "{home}/work"
{worker}""",
        encoding="utf-8",
    )
    return path


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# Processes.


def processes_of(home: Path) -> list[int]:
    """Live processes that belong to the stack in `home`."""
    marker = os.fsencode(home)
    return live_pids_where(
        lambda pid: marker in proc_bytes(pid, "cmdline") or marker in proc_bytes(pid, "environ")
    )


def kill_everything_of(home: Path) -> list[int]:
    """SIGKILL every live process of the stack in `home` (and its process group); returns
    the pids that had to be killed."""
    victims = processes_of(home)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)  # a stopped process must be able to die
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if victims:
        wait_for(lambda: not processes_of(home), 10, f"processes of {home} to die")
    return victims


# Output of a child process.


class _Collector:
    """Reads a pipe line by line in a thread, so the child never blocks on a full pipe."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in self._stream:
                self.lines.append(line.rstrip("\n"))

    def join(self) -> None:
        self._thread.join(5)
        self._stream.close()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class UpProcess:
    """`danube up --home DIR` running as a subprocess in its own session."""

    def __init__(
        self,
        home: Path,
        *args: str,
        cwd: Path | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        env = program_environment() | (env_extra or {})
        self.process = subprocess.Popen(
            [str(DANUBE), "up", "--home", str(home), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd or home,
            start_new_session=True,
        )
        self.stdout = _Collector(self.process.stdout)
        self.stderr = _Collector(self.process.stderr)
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe(self) -> str:
        return f"stdout:\n{self.stdout.text}\nstderr:\n{self.stderr.text}"

    def wait_for_url(self, timeout: float = READY_TIMEOUT_S) -> str:
        """The URL `danube up` prints once the API is ready."""

        def url() -> str | None:
            for line in self.stdout.lines:
                if "Danube is ready at " in line:
                    return line.split("Danube is ready at ", 1)[1].split()[0]
            if self.process.poll() is not None:
                self.finish()
                raise AssertionError(
                    f"danube up exited with {self.process.returncode} before it was ready\n"
                    + self.describe()
                )
            return None

        return wait_for(url, timeout, "danube up to print the API URL")

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"danube up still running after {timeout} s\n" + self.describe()
            ) from None
        return self.finish()

    def finish(self) -> int:
        code = self.process.wait()
        self.stdout.join()
        self.stderr.join()
        self.returncode = code
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.finish()


class Stack:
    """A stack as seen from outside: its HTTP API, its supervisord, its files."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.layout = Layout.for_home(home)
        self.supervisor = SupervisorClient(self.layout.supervisor_socket)
        self.socket_dir = home / "run"
        self.database = home / "data" / "danube.db"
        self.key_path = home / "keys" / "encryption.key"

    def client(self, timeout: float = 10.0) -> httpx.Client:
        """A client of the stack's API that sends the site admin's token `danube up`
        wrote (once it has)."""
        token_file = self.home / "admin.token"
        headers = {}
        if token_file.exists():
            headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def worker_client(self, timeout: float = 10.0) -> httpx.Client:
        """A client of the stack's API that sends the worker token `danube up` wrote: what
        a test that plays the worker itself (under `--workers 0`) claims with."""
        token = (self.home / "worker.token").read_text().strip()
        return httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def claim(self) -> tuple[dict[str, Any], str]:
        """Claim the oldest pending job as the worker: (the job, its job token)."""
        with self.worker_client() as worker:
            claimed = worker.post("/api/v1/worker/claim")
        assert claimed.status_code == 200, claimed.text
        body = claimed.json()
        return body["job"], str(body["token"])

    def readyz(self) -> httpx.Response:
        with self.client(5.0) as client:
            return client.get("/readyz")

    def program(self, name: str) -> ProcessInfo:
        return self.supervisor.process(name)

    def wait_running(self, name: str, *, not_pid: int = 0, timeout: float = 30.0) -> int:
        """The pid of `name` once supervisord reports it RUNNING (under a pid other than
        `not_pid`): RUNNING means it stayed up its `startsecs`."""

        def running() -> int:
            try:
                info = self.program(name)
            except SupervisorUnavailable:
                return 0
            if info.state == RUNNING and info.pid and info.pid != not_pid:
                return info.pid
            return 0

        return int(wait_for(running, timeout, f"{name} to be RUNNING", interval=0.1))

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            try:
                return self.readyz().status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "/readyz 200", interval=0.1)

    def supervisord_pid(self) -> int:
        return int((self.layout.run_dir / "supervisord.pid").read_text().strip())

    def log_records(self, program: str) -> list[dict[str, Any]]:
        """The JSON lines of a program's log (other lines, such as tracebacks printed
        before logging was configured, are skipped)."""
        path = self.layout.log_dir / f"{program}.log"
        records: list[dict[str, Any]] = []
        if not path.exists():
            return records
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def supervisord_log(self) -> str:
        path = self.layout.log_dir / "supervisord.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""


def log_time(record: dict[str, Any]) -> float:
    """A log record's timestamp as seconds since the epoch."""
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


def keyd_ping(socket_dir: Path, timeout_ms: int = 2000) -> dict[str, Any]:
    """keyd's answer to `ping` on the worker socket: `key_id` and `boot_id`."""
    context = zmq.Context()
    try:
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"ipc://{socket_dir}/keyd-worker.sock")
            sock.send(msgspec.msgpack.encode({"v": 1, "id": 7, "op": "ping"}))
            assert sock.poll(timeout_ms, zmq.POLLIN), "keyd did not answer ping"
            reply = msgspec.msgpack.decode(sock.recv())
        finally:
            sock.close(linger=0)
    finally:
        context.term()
    assert reply["ok"] is True, reply
    return reply


class HostSupervisor:
    """supervisord run as a host install runs it, on the same deploy/supervisord.conf
    `danube up` uses, but as this user in a temporary directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        layout = Layout.for_home(home)
        env = supervisor_environment(layout, BIN, base=os.environ)
        self.process = subprocess.Popen(
            supervisord_command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=home,
            start_new_session=True,
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


class Stacks:
    """What one test started; `close()` stops it all and removes the directories."""

    def __init__(self) -> None:
        self.homes: list[Path] = []
        self.ups: list[UpProcess] = []
        self.hosts: list[HostSupervisor] = []
        self.stray: list[int] = []

    def home(
        self,
        *,
        keyd_timeout_ms: int = KEYD_TIMEOUT_MS,
        log_level: str = "info",
        api: str = "",
        worker: str = "",
    ) -> tuple[Path, int]:
        """A fresh short directory with a danube.toml on a free port (`api` and `worker`:
        more lines of those sections)."""
        home = new_home()
        self.homes.append(home)
        port = free_port()
        write_config(
            home,
            port,
            keyd_timeout_ms=keyd_timeout_ms,
            log_level=log_level,
            extra=api,
            worker=worker,
        )
        return home, port

    def up(
        self,
        home: Path,
        *args: str,
        cwd: Path | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> UpProcess:
        process = UpProcess(home, *args, cwd=cwd, env_extra=env_extra)
        self.ups.append(process)
        return process

    def start(
        self,
        home: Path,
        port: int,
        *args: str,
        env_extra: dict[str, str] | None = None,
    ) -> tuple[Stack, UpProcess]:
        """`danube up [ARGS]` in `home`, once it has printed the URL."""
        process = self.up(home, *args, env_extra=env_extra)
        url = process.wait_for_url()
        assert url == f"http://127.0.0.1:{port}", process.describe()
        return Stack(home, port), process

    def host(self, home: Path) -> HostSupervisor:
        supervisor = HostSupervisor(home)
        self.hosts.append(supervisor)
        return supervisor

    def close(self) -> None:
        for process in self.ups:
            if process.process.poll() is None:
                for pid in processes_of(process.home):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGCONT)
                with contextlib.suppress(AssertionError):
                    process.stop(timeout=20)
            process.kill()
        for supervisor in self.hosts:
            supervisor.stop(timeout=20)
        for home in self.homes:
            self.stray.extend(kill_everything_of(home))
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def stacks() -> Iterator[Stacks]:
    started = Stacks()
    try:
        yield started
    finally:
        started.close()


class Load:
    """Requests made over and over by a few threads, each on its own connection, with
    the outcome and duration of every one: `(started, ended, status)`, status 0 for a
    request that got no HTTP answer (connection refused or reset)."""

    def __init__(
        self,
        stack: Stack,
        request: Callable[[httpx.Client, str], httpx.Response],
        *,
        threads: int = 4,
    ) -> None:
        self._stack = stack
        self._request = request
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.results: list[tuple[float, float, int]] = []
        self.bodies: dict[int, str] = {}
        self.acknowledged: list[httpx.Response] = []
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]

    def _run(self, worker: int) -> None:
        count = 0
        with self._stack.client(timeout=15.0) as client:
            while not self._stop.is_set():
                count += 1
                started = time.monotonic()
                try:
                    response = self._request(client, f"{worker}-{count}")
                except httpx.TransportError:
                    status = 0
                    response = None
                    time.sleep(0.02)  # the API is down: do not spin
                else:
                    status = response.status_code
                ended = time.monotonic()
                with self._lock:
                    self.results.append((started, ended, status))
                    if response is not None:
                        self.bodies.setdefault(status, response.text)
                        if response.is_success:
                            self.acknowledged.append(response)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def successes_since(self, moment: float) -> int:
        with self._lock:
            return sum(
                1
                for started, _, status in self.results
                if started >= moment and 200 <= status < 300
            )

    def wait_success_since(self, moment: float, count: int = 1, timeout: float = 30.0) -> None:
        wait_for(
            lambda: self.successes_since(moment) >= count,
            timeout,
            f"{count} successful requests",
        )
