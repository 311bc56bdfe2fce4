"""`danube up` as an operator runs it: first start, clean stop, restart on the same state."""

from __future__ import annotations

import os
import signal
import stat
import subprocess

import pytest

from danube_shared.keyd_protocol import key_id_for
from tests.support.processes import alive
from tests.support.stack import DANUBE, Stacks, keyd_ping, processes_of, wait_for

pytestmark = pytest.mark.e2e


def test_up_serves_stops_cleanly_and_restarts_on_the_same_key_and_data(stacks: Stacks):
    """`danube up` prints the URL once /readyz is 200; SIGTERM stops every process it
    started and exits 0; a second `danube up` on the same DIR reuses key and data, and
    Ctrl-C stops it just as cleanly."""
    home, port = stacks.home()
    stack, up = stacks.start(home, port)

    assert stack.readyz().status_code == 200
    assert [line for line in up.stdout.lines if "Danube is ready at" in line] == [
        f"Danube is ready at http://127.0.0.1:{port} (state in {home}; Ctrl-C stops it)"
    ]
    key = stack.key_path.read_bytes()
    assert len(key) == 32
    assert stat.S_IMODE(stack.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    first_ping = keyd_ping(stack.socket_dir)
    assert first_ping["key_id"] == key_id_for(key)
    with stack.client() as client:
        created = client.post("/api/v1/teams", json={"name": "first-team"})
        assert created.status_code == 201, created.text
        team = created.json()

    stack.wait_running("api")  # RUNNING once it stayed up its startsecs
    status = subprocess.run(
        [str(DANUBE), "status", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines() if line}
    assert lines["keyd"] == "RUNNING", status.stdout
    assert lines["api"] == "RUNNING", status.stdout

    pids = {
        "danube up": up.pid,
        "supervisord": stack.supervisord_pid(),
        "keyd": stack.program("keyd").pid,
        "api": stack.program("api").pid,
    }
    assert all(pids.values()), pids
    assert up.stop(signal.SIGTERM) == 0, up.describe()
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert processes_of(home) == []

    stack, up = stacks.start(home, port)
    assert stack.key_path.read_bytes() == key
    second_ping = keyd_ping(stack.socket_dir)
    assert second_ping["key_id"] == first_ping["key_id"]
    assert second_ping["boot_id"] != first_ping["boot_id"]
    with stack.client() as client:
        again = client.get(f"/api/v1/teams/{team['id']}")
        assert again.status_code == 200, again.text
        assert again.json()["name"] == "first-team"
    assert "generated a new key" not in up.stderr.text
    assert stack.log_records("migrator")[-1]["message"] == "database already at head"

    pids = {"danube up": up.pid, "supervisord": stack.supervisord_pid()}
    pids |= {name: stack.program(name).pid for name in ("keyd", "api")}
    # Ctrl-C in a terminal: SIGINT to the foreground process group, which holds `danube
    # up` and supervisord (supervisord puts each program in a group of its own).
    os.killpg(up.pid, signal.SIGINT)
    assert up.wait() == 0, up.describe()
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert processes_of(home) == []


def test_killed_danube_up_takes_its_stack_down_with_it(stacks: Stacks):
    """kill -9 of `danube up` itself: supervisord, told by the kernel that its parent died,
    stops keyd and the API; nothing is left running."""
    home, port = stacks.home()
    stack, up = stacks.start(home, port)
    pids = [stack.supervisord_pid(), stack.program("keyd").pid, stack.program("api").pid]

    os.kill(up.pid, signal.SIGKILL)
    assert up.wait() == -signal.SIGKILL

    wait_for(lambda: not any(alive(pid) for pid in pids), 30, "the stack to stop")
    assert processes_of(home) == []
    status = subprocess.run(
        [str(DANUBE), "status", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert status.returncode != 0
