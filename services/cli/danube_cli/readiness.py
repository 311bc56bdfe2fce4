"""When the stack `danube up` started is ready: the migrator has exited 0 and the API
answers 200 on /readyz (it serves only at the schema head, with keyd reachable)."""

from __future__ import annotations

import http.client
import time

from danube_cli.diagnosis import migrated, startup_failures
from danube_cli.errors import Interrupted, StackError
from danube_cli.stop_request import StopRequest
from danube_cli.supervisor_control import SupervisorUnavailable
from danube_cli.supervisord import Supervisor
from danube_shared.config import Settings

READY_TIMEOUT_S = 90.0
POLL_S = 0.1
# Until supervisord answers. Its main loop polls its sockets with a one-second timeout
# before it spawns anything, so the first spawn waits for this process's first call: a
# refused connect costs next to nothing, a coarse interval costs the whole stack's start.
SUPERVISOR_POLL_S = 0.005


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


def wait_until_ready(supervisor: Supervisor, settings: Settings, stop: StopRequest) -> None:
    """Return once the migrator has exited 0 and /readyz is 200; raise if a program
    fails, supervisord dies, a stop is requested, or the deadline passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_answer = "no answer yet"
    answered = False
    while True:
        if stop.requested:
            raise Interrupted
        code = supervisor.exited()
        if code is not None:
            raise StackError(
                f"supervisord exited with code {code} while starting", log=supervisor.log
            )
        listening = answered or supervisor.layout.supervisor_socket.exists()
        if not listening and time.monotonic() <= deadline:
            # Nothing runs before supervisord listens; its socket's file is the cheap sign.
            stop.event.wait(SUPERVISOR_POLL_S)
            continue
        try:
            programs = supervisor.programs()
            answered = True
        except SupervisorUnavailable:
            programs = {}  # not listening yet
        failures = startup_failures(
            programs, supervisor.log, supervisor.log_offset, supervisor.layout.log_dir
        )
        if failures:
            supervisor.stop()  # flushes the program's log before it is shown
            raise failures[0]
        if programs:
            # /readyz waits up to keyd's deadline before it answers 503 naming keyd.
            status, body = readyz(settings, timeout=settings.keyd.request_timeout_ms / 1000 + 1)
            if status == 200 and migrated(programs):
                return
            last_answer = f"{status} {body}" if status else body
        if time.monotonic() > deadline:
            raise StackError(
                f"the stack was not ready within {READY_TIMEOUT_S:.0f} s (last /readyz: "
                f"{last_answer}); see the logs in {supervisor.layout.log_dir}"
            )
        stop.event.wait(POLL_S if answered else SUPERVISOR_POLL_S)
