"""Start-up ordering: supervisord starts the migrator, keyd and the API together (DESIGN
section 3), the API never serves before the migrator has finished, and the migrator runs
exactly once per start, under `danube up` and as a host install runs it."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from danube_cli.supervisor_control import EXITED
from danube_keyd.keyfile import write_new_key
from tests.support.stack import Stack, Stacks, log_time, processes_of, wait_for

pytestmark = pytest.mark.e2e

# The line each migrator run ends with when it succeeds.
MIGRATOR_DONE = ("database migrated", "database already at head")


class FirstServed:
    """Polls GET /healthz from before the stack starts; remembers when it first answered."""

    def __init__(self, port: int) -> None:
        self.at: float | None = None
        self._port = port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self._port}", timeout=2.0) as client:
            while not self._stop.is_set():
                try:
                    answered = client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    answered = False
                if answered:
                    self.at = time.time()
                    return
                time.sleep(0.01)

    def __enter__(self) -> FirstServed:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _migrator_runs(stack: Stack) -> list[dict[str, object]]:
    return [r for r in stack.log_records("migrator") if r.get("message") in MIGRATOR_DONE]


def test_danube_up_runs_the_migrator_once_per_start_and_the_api_serves_after_it(
    stacks: Stacks,
):
    """Three cold starts of `danube up` in one DIR: supervisord runs the migrator exactly
    once per start, beside keyd and the API, which first answers after it finished; the
    migrator has exited 0 by the time `danube up` says the stack is ready."""
    home, port = stacks.home()
    for start in range(1, 4):
        with FirstServed(port) as served:
            stack, up = stacks.start(home, port)
            stack.wait_ready()
        runs = _migrator_runs(stack)
        assert len(runs) == start, runs
        assert runs[0]["message"] == "database migrated"
        assert served.at is not None
        assert served.at > log_time(runs[-1])
        assert stack.supervisord_log().count("spawned: 'migrator'") == start
        migrator = stack.program("migrator")
        assert (migrator.state, migrator.exitstatus) == (EXITED, 0)
        assert up.stop() == 0, up.describe()


def test_host_install_supervisord_migrates_before_the_api_serves(stacks: Stacks):
    """supervisord run as a host install runs it (it starts the migrator, keyd and the API
    together): on fresh databases, twice, the migrator runs once and the API, retried by
    supervisord while the schema is behind, first answers after the migration finished."""
    for _start in range(2):
        home, port = stacks.home()
        write_new_key(home / "keys" / "encryption.key")
        (home / "log").mkdir(mode=0o700)
        (home / "run").mkdir(mode=0o750)
        stack = Stack(home, port)
        with FirstServed(port) as served:
            host = stacks.host(home)
            stack.wait_ready(60)
        runs = _migrator_runs(stack)
        assert [run["message"] for run in runs] == ["database migrated"]
        assert served.at is not None
        assert served.at > log_time(runs[0])
        assert stack.supervisord_log().count("spawned: 'migrator'") == 1
        # supervisord notices an exit at its next tick (up to a second later).
        migrator = wait_for(
            lambda stack=stack: (info := stack.program("migrator")).state == EXITED and info,
            10,
            "supervisord to see the migrator exit",
        )
        assert migrator.exitstatus == 0
        assert host.stop() == 0
        assert processes_of(home) == []
