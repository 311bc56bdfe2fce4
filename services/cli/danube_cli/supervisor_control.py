"""A typed client of supervisord's XML-RPC interface over its Unix socket.

`danube up` watches its programs through this (is keyd running, did the migrator exit,
with which status, what is its pid) without spawning `supervisorctl` for every look. Only
the few read-only calls it needs are wrapped; `danube status` shells out to
`supervisorctl`, which an operator already knows.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

# supervisor ships no type information; the two classes used here are its public
# XML-RPC client (the one supervisorctl uses).
from supervisor.xmlrpc import (  # pyright: ignore[reportMissingTypeStubs] -- see above
    SupervisorTransport,
    UnixStreamHTTPConnection,
)

# supervisord's process states (supervisor.states.ProcessStates), by name.
STARTING = "STARTING"
RUNNING = "RUNNING"
BACKOFF = "BACKOFF"
STOPPING = "STOPPING"
EXITED = "EXITED"
FATAL = "FATAL"
STOPPED = "STOPPED"


@dataclass(frozen=True)
class ProcessInfo:
    """One program as supervisord sees it."""

    name: str
    state: str
    pid: int
    exitstatus: int
    spawnerr: str
    logfile: str
    description: str

    @classmethod
    def from_rpc(cls, raw: dict[str, Any]) -> ProcessInfo:
        return cls(
            name=str(raw["name"]),
            state=str(raw["statename"]),
            pid=int(raw["pid"]),
            exitstatus=int(raw["exitstatus"]),
            spawnerr=str(raw["spawnerr"]),
            logfile=str(raw["stdout_logfile"]),
            description=str(raw["description"]),
        )


class SupervisorUnavailable(Exception):
    """supervisord's socket is absent or does not answer."""


class _TimedUnixConnection(UnixStreamHTTPConnection):
    """supervisor's Unix-socket HTTP connection, with the timeout HTTPConnection takes
    applied to the socket (supervisor's own connect ignores it: a wedged supervisord
    would hang `danube up`)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socketfile = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socketfile)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class TimedSupervisorTransport(SupervisorTransport):
    """supervisorctl's transport (`supervisor.xmlrpc.SupervisorTransport`) on a Unix
    socket, whose every call gives up after `timeout` seconds."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__(serverurl=f"unix://{socket_path}")  # pyright: ignore[reportUnknownMemberType] -- untyped, see the import
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def request(self, host: Any, handler: str, request_body: Any, verbose: bool = False) -> Any:  # noqa: FBT001, FBT002 -- xmlrpc.client.Transport.request's signature
        # SupervisorTransport opens its connection (and sets these headers) only when it
        # has none: hand it a timed one first, through its public attributes.
        if not self.connection:
            self.connection = _TimedUnixConnection(self.socket_path, self.timeout)
            self.headers = {
                "User-Agent": self.user_agent,
                "Content-Type": "text/xml",
                "Accept": "text/xml",
            }
        return super().request(host, handler, request_body, verbose)


class SupervisorClient:
    """Read-only calls to the supervisord listening on `socket_path`."""

    def __init__(self, socket_path: Path, timeout: float = 2.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout

    def _call(self, method: str, *args: object) -> Any:
        # A fresh proxy per call: a proxy's connection does not survive supervisord restarting.
        proxy = xmlrpc.client.ServerProxy(
            "http://localhost", transport=TimedSupervisorTransport(self.socket_path, self._timeout)
        )
        try:
            with proxy:
                return getattr(proxy, method)(*args)
        except (OSError, http.client.HTTPException, xmlrpc.client.Error) as exc:
            raise SupervisorUnavailable(f"{self.socket_path}: {exc}") from exc

    def pid(self) -> int:
        """supervisord's own pid."""
        return int(self._call("supervisor.getPID"))

    def processes(self) -> list[ProcessInfo]:
        raw = cast(list[dict[str, Any]], self._call("supervisor.getAllProcessInfo"))
        return [ProcessInfo.from_rpc(item) for item in raw]

    def process(self, name: str) -> ProcessInfo:
        raw = cast(dict[str, Any], self._call("supervisor.getProcessInfo", name))
        return ProcessInfo.from_rpc(raw)
