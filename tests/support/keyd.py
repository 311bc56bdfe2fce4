"""A real `danube-keyd` for tests: a home directory with a generated key and a config,
the process serving real ipc:// sockets in it, and a raw ZeroMQ peer to talk to it.

Homes live in short directories under /tmp (ipc socket paths are limited to 107 bytes).
Every process a test starts is killed by its pid, whatever happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import zmq

from danube_shared.config import Settings, load_settings
from danube_shared.keyd_protocol import control_socket_path, endpoint, worker_socket_path
from tests.support.isolation import program_environment
from tests.support.processes import live_pids_where, proc_bytes

KEYD = Path(sys.executable).with_name("danube-keyd")
START_TIMEOUT_S = 10.0


@dataclass
class KeydHome:
    """A directory holding a key, a config file and (once keyd runs) its sockets."""

    root: Path
    config_path: Path
    key_path: Path
    socket_dir: Path
    log_path: Path

    @property
    def settings(self) -> Settings:
        return load_settings(self.config_path, environ={})

    @property
    def control_path(self) -> Path:
        return control_socket_path(self.socket_dir)

    @property
    def worker_path(self) -> Path:
        return worker_socket_path(self.socket_dir)

    def write_config(self, *, database_path: Path | None = None, **keyd: Any) -> None:
        """Write the config: [keyd] with these homes' paths and `keyd`'s keys, and a
        [database] section when `database_path` is given."""
        values = {
            "key_path": str(self.key_path),
            "socket_dir": str(self.socket_dir),
            "audit_path": str(self.audit_path),
            "request_timeout_ms": 1000,
            **keyd,
        }
        lines = ["[log]", 'level = "debug"', "[keyd]"]
        # JSON's strings, integers and integer lists are valid TOML values.
        lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
        if database_path is not None:
            lines += ["[database]", f"path = {json.dumps(str(database_path))}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def audit_path(self) -> Path:
        return self.root / "log" / "keyd-audit.log"

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@dataclass
class KeydProcess:
    home: KeydHome
    process: subprocess.Popen[bytes]
    _log: Any = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        os.kill(self.process.pid, signum)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL by pid, if still running, and reap it; the log is closed whatever
        happens. Raises `subprocess.TimeoutExpired` only if the process outlives SIGKILL."""
        try:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGCONT)  # a stopped process must die too
                    os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        finally:
            self._log.close()


class Killable(Protocol):
    def kill(self) -> None: ...


def kill_every(processes: Iterable[Killable]) -> None:
    """Kill every process in `processes`, each whatever happened to the ones before it;
    then raise the first failure, if any, so that teardown still reports it."""
    failures: list[BaseException] = []
    for process in processes:
        try:
            process.kill()
        except Exception as exc:  # noqa: BLE001 -- collected and re-raised below, after every kill
            failures.append(exc)
    if failures:
        raise failures[0]


def keyd_pids_naming(roots: Iterable[Path]) -> list[int]:
    """Live `danube-keyd` processes whose command line names one of `roots`."""
    markers = [os.fsencode(root) for root in roots]

    def names_a_root(pid: int) -> bool:
        cmdline = proc_bytes(pid, "cmdline")
        return b"danube-keyd" in cmdline and any(
            marker + b"/" in cmdline or marker + b"\0" in cmdline for marker in markers
        )

    return live_pids_where(names_a_root)


def kill_strays(roots: Iterable[Path]) -> list[int]:
    """SIGKILL any `danube-keyd` left running in one of `roots` (started by a test without
    these fixtures, or whose Popen was lost); returns their pids."""
    strays = keyd_pids_naming(roots)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    return strays


def remove_homes(homes: Iterable[KeydHome]) -> None:
    """Kill whatever keyd still runs in `homes`, then delete their directories."""
    roots = [home.root for home in homes]
    kill_strays(roots)
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def make_home(**keyd: Any) -> KeydHome:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="dk"))
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    key_path = keys / "encryption.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    home = KeydHome(
        root=root,
        config_path=root / "danube.toml",
        key_path=key_path,
        socket_dir=root / "run",
        log_path=root / "keyd.log",
    )
    home.write_config(**keyd)
    return home


def spawn(home: KeydHome) -> KeydProcess:
    log = home.log_path.open("ab")
    process = subprocess.Popen(
        [str(KEYD), "--config", str(home.config_path)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=program_environment(),
    )
    return KeydProcess(home, process, log)


def wait_ready(keyd: KeydProcess, timeout: float = START_TIMEOUT_S) -> None:
    """Until keyd answers a ping on both sockets (or has exited, or time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if keyd.process.poll() is not None:
            raise AssertionError(
                f"keyd exited with {keyd.process.returncode}:\n{keyd.home.log_text()}"
            )
        if keyd.home.control_path.exists() and keyd.home.worker_path.exists():
            with (
                RawPeer(keyd.home.control_path) as control,
                RawPeer(keyd.home.worker_path) as worker,
            ):
                if control.ask({"v": 1, "id": 1, "op": "ping"}, timeout_ms=500) and worker.ask(
                    {"v": 1, "id": 1, "op": "ping"}, timeout_ms=500
                ):
                    return
        time.sleep(0.02)
    raise AssertionError(f"keyd not ready within {timeout}s:\n{keyd.home.log_text()}")


class RawPeer:
    """A bare DEALER on one keyd socket, speaking the wire format by hand."""

    def __init__(self, path: Path) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint(path))

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def send_frames(self, frames: Sequence[bytes]) -> None:
        self.socket.send_multipart(list(frames))

    def receive(self, timeout_ms: int = 2000) -> dict[str, Any] | None:
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self.socket.recv_multipart()
        assert len(frames) == 2, frames
        assert frames[0] == b"", frames
        return msgspec.msgpack.decode(frames[1])

    def ask_raw(self, payload: bytes, timeout_ms: int = 2000) -> dict[str, Any] | None:
        self.send_frames([b"", payload])
        return self.receive(timeout_ms)

    def ask(self, message: Any, timeout_ms: int = 2000) -> dict[str, Any] | None:
        return self.ask_raw(msgspec.msgpack.encode(message), timeout_ms)


def encrypt(control: RawPeer, plaintext: bytes, context: str) -> bytes:
    """One `encrypt` over the control socket; its ciphertext."""
    reply = control.ask(
        {"v": 1, "id": 1, "op": "encrypt", "items": [{"plaintext": plaintext, "context": context}]}
    )
    assert reply is not None
    assert reply["ok"], reply
    return reply["items"][0]


def load(
    control: RawPeer,
    job_id: str,
    secrets: dict[str, tuple[bytes, str]],
    *,
    token: str,
    ttl_s: int = 600,
) -> dict[str, Any]:
    """One `job_load` of `secrets` (name: ciphertext and context) for the job token
    `token`; keyd's reply, whatever it says."""
    reply = control.ask(
        {
            "v": 1,
            "id": 2,
            "op": "job_load",
            "job_id": job_id,
            "token_sha256": hashlib.sha256(token.encode()).digest(),
            "ttl_s": ttl_s,
            "secrets": [
                {"name": name, "ciphertext": ciphertext, "context": context}
                for name, (ciphertext, context) in secrets.items()
            ],
        },
        timeout_ms=10_000,
    )
    assert reply is not None
    return reply
