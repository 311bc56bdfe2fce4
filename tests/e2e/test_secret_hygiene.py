"""Invariant 2 on the real stack: a secret's value, and a job's token, are in no file a
stack writes and in no HTTP response, with every program logging at trace.

`danube up` runs the stack as an operator runs it; values go in through the HTTP API,
a worker fetches them from keyd's worker socket, the job finishes, the stack stops
cleanly; then every file under DIR is searched (the config, the database and its -wal
and -shm, a pre-migrate backup if there is one, every program's log and supervisord's,
the key file too) in every encoding the in-process suite
(tests/api/test_secret_hygiene.py) searches for.
"""

from __future__ import annotations

import contextlib
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest

from danube_shared.keyd_worker_client import fetch_job_secrets
from tests.api.test_secret_hygiene import byte_encodings, encodings, plant
from tests.support.stack import Stack, Stacks

pytestmark = pytest.mark.e2e


def files_of(home: Path) -> dict[Path, bytes]:
    """Every regular file under `home` (sockets and the like are not files to search)."""
    return {
        path.relative_to(home): path.read_bytes()
        for path in sorted(home.rglob("*"))
        if stat.S_ISREG(path.lstat().st_mode)
    }


def stored_ciphertexts(database: Path) -> set[bytes]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return {bytes(row[0]) for row in db.execute("SELECT ciphertext FROM secrets")}


class Recorder:
    """Every HTTP response the test got, as (path, body)."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, bytes]] = []

    def __call__(self, response: httpx.Response) -> None:
        self.responses.append((response.request.url.path, response.read()))

    def bodies(self, *, but_claim: bool = False) -> list[tuple[str, bytes]]:
        return [
            (path, body)
            for path, body in self.responses
            if not (but_claim and path.endswith("/worker/claim"))
        ]


def plant_and_run_a_job(
    stack: Stack, client: httpx.Client, worker: httpx.Client, values: dict[str, str]
) -> tuple[str, set[bytes]]:
    """Team and pipeline secrets (one shadowed, one replaced, one deleted), a job that
    runs, whose worker fetches its secrets, and finishes. Returns the job's token and
    every ciphertext the secrets table held along the way."""
    team = client.post("/api/v1/teams", json={"name": "hygiene"})
    assert team.status_code == 201, team.text
    pipeline = client.post(
        f"/api/v1/teams/{team.json()['id']}/pipelines",
        json={"name": "build", "steps": [{"name": "make", "command": "make"}]},
    )
    assert pipeline.status_code == 201, pipeline.text
    team_url = f"/api/v1/teams/{team.json()['id']}/secrets"
    pipeline_url = f"/api/v1/pipelines/{pipeline.json()['id']}/secrets"
    ciphertexts: set[bytes] = set()
    for url, value in (
        (f"{team_url}/TEAM_ONLY", values["team"]),
        (f"{team_url}/SHARED", values["shadowed"]),
        (f"{pipeline_url}/SHARED", values["pipeline"]),
        (f"{pipeline_url}/ROTATED", values["replaced"]),
        (f"{pipeline_url}/ROTATED", values["final"]),
        (f"{team_url}/GONE", values["deleted"]),
    ):
        put = client.put(url, json={"value": value})
        assert put.is_success, put.text
        ciphertexts |= stored_ciphertexts(stack.database)
    assert client.delete(f"{team_url}/GONE").status_code == 204
    assert client.get(team_url).status_code == 200
    assert client.get(pipeline_url).status_code == 200

    job = client.post(f"/api/v1/pipelines/{pipeline.json()['id']}/jobs")
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    claimed = worker.post("/api/v1/worker/claim")
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["job"]["id"] == job_id
    token = str(claimed.json()["token"])
    # The worker's side: the job's secrets, by its token, from keyd's worker socket.
    assert fetch_job_secrets(stack.socket_dir, job_id, token) == {
        "TEAM_ONLY": values["team"].encode(),
        "SHARED": values["pipeline"].encode(),
        "ROTATED": values["final"].encode(),
    }
    assert worker.patch(f"/api/v1/jobs/{job_id}/steps/0", json={"status": "running"}).is_success
    finished = worker.post(f"/api/v1/jobs/{job_id}/finish", json={"status": "succeeded"})
    assert finished.status_code == 200, finished.text
    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200
    return token, ciphertexts


def test_values_and_the_token_are_in_no_file_of_the_stack_and_no_response(stacks: Stacks):
    """With log.level trace: after a stack ran a job on planted team and pipeline
    secrets and stopped cleanly, no file under DIR (searched also while it ran, when the
    -wal held the writes) holds a value or the job's token in any encoding; no response
    holds a value, none but the claim's the token; no log holds a stored ciphertext."""
    home, port = stacks.home(log_level="trace")
    # No worker of the stack's own: the test claims the job itself, to hold its token.
    stack, up = stacks.start(home, port, "--workers", "0")
    values = {
        name: plant(name)
        for name in ("team", "pipeline", "shadowed", "replaced", "final", "deleted")
    }
    recorder = Recorder()
    admin_token = (home / "admin.token").read_text().strip()
    worker_token = (home / "worker.token").read_text().strip()
    with (
        httpx.Client(
            base_url=stack.url,
            timeout=10.0,
            event_hooks={"response": [recorder]},
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as client,
        httpx.Client(
            base_url=stack.url,
            timeout=10.0,
            event_hooks={"response": [recorder]},
            headers={"Authorization": f"Bearer {worker_token}"},
        ) as worker,
    ):
        token, ciphertexts = plant_and_run_a_job(stack, client, worker, values)
    running = files_of(home)
    assert up.stop() == 0, up.describe()
    stopped = files_of(home)

    assert Path("data/danube.db-wal") in running
    assert {
        Path("danube.toml"),
        Path("data/danube.db"),
        Path("keys/encryption.key"),
        Path("log/api.log"),
        Path("log/keyd.log"),
        Path("log/migrator.log"),
        Path("log/supervisord.log"),
    } <= set(stopped)
    # Trace really was on: library records below INFO reached the API's log.
    assert b'"level": "debug"' in stopped[Path("log/api.log")]
    searched = [(f"{path} (running)", data) for path, data in running.items()]
    searched += [(f"{path} (stopped)", data) for path, data in stopped.items()]

    for name, value in values.items():
        for form, needle in encodings(value).items():
            for where, data in searched:
                assert needle not in data, f"{name} value found {form} in {where}"
            for path, body in recorder.bodies():
                assert needle not in body, f"{name} value found {form} in the response to {path}"

    assert any(token.encode() in body for _, body in recorder.bodies()), "the claim's response"
    for form, needle in encodings(token).items():
        for where, data in searched:
            assert needle not in data, f"the token found {form} in {where}"
        for path, body in recorder.bodies(but_claim=True):
            assert needle not in body, f"the token found {form} in the response to {path}"

    logs = [
        (f"{path} ({when})", data)
        for when, files in (("running", running), ("stopped", stopped))
        for path, data in files.items()
        if path.suffix == ".log"
    ]
    for where, data in logs:
        # A binary SQL parameter printed at all (as a memoryview today) is the leak.
        assert b"<memory at 0x" not in data, f"a binary SQL parameter is printed in {where}"
    assert len(ciphertexts) == 6
    for number, ciphertext in enumerate(sorted(ciphertexts)):
        for form, needle in byte_encodings(ciphertext).items():
            for where, data in logs:
                assert needle not in data, f"ciphertext {number} found {form} in {where}"
            for path, body in recorder.bodies():
                assert needle not in body, f"ciphertext {number} found {form} in {path}"
