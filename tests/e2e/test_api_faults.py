"""The API killed with kill -9 in the middle of a stream of writes loses nothing it
acknowledged, and leaves a sound database."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import httpx
import pytest

from tests.support.stack import Load, Stacks, wait_for

pytestmark = pytest.mark.e2e


def _create_team(client: httpx.Client, tag: str) -> httpx.Response:
    return client.post("/api/v1/teams", json={"name": f"team-{tag}"})


def test_api_killed_during_writes_keeps_every_acknowledged_write(stacks: Stacks):
    """kill -9 the API while four clients create teams: supervisord restarts it; every
    team whose creation was answered 201 is there afterwards; PRAGMA integrity_check is ok."""
    home, port = stacks.home()
    stack, _up = stacks.start(home, port)
    api_pid = stack.program("api").pid

    with Load(stack, _create_team, threads=4) as load:
        load.wait_success_since(0.0, count=40)
        os.kill(api_pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(
            lambda: stack.program("api").pid not in (0, api_pid), 30, "the API to be restarted"
        )
        load.wait_success_since(killed, count=40)

    statuses = {status for _, _, status in load.results}
    assert statuses <= {0, 201}, (statuses, load.bodies)  # 0: refused while it was down
    acknowledged = {
        response.json()["id"]: response.json()["name"] for response in load.acknowledged
    }
    assert len(acknowledged) >= 80

    with stack.client() as client:
        missing = [
            team_id
            for team_id, name in acknowledged.items()
            if (found := client.get(f"/api/v1/teams/{team_id}")).status_code != 200
            or found.json()["name"] != name
        ]
    assert missing == []

    connection = sqlite3.connect(f"file:{stack.database}?mode=ro", uri=True)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        stored = {row[0] for row in connection.execute("SELECT id FROM teams")}
    finally:
        connection.close()
    assert set(acknowledged) <= stored
