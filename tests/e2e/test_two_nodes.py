"""Two nodes on one PostgreSQL (DESIGN 15): two `danube up` homes share one throwaway
server, with the same key copied into both and a different `api.node` each, `--workers 2`
each. Jobs run once whatever node claims them, job numbers stay unique under concurrent
creation through both nodes, a node's killed worker has its job failed once, no secret is
in the server's files, and the server going away and coming back gives 503s and then
recovery without a restart.

The server is started here (`.ci/postgres start DIR`), since the tests stop and start it
and read its data directory; the tests skip, saying why, only when the PostgreSQL server
binaries are absent and `DANUBE_TEST_DATABASE_URL` is unset. With only the variable, the
tests that need the server's files or `pg_ctl` skip and the others run on a database of
their own on that server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from danube_cli.supervisor_control import TimedSupervisorTransport
from tests.support.postgres import (
    create_empty_database,
    drop_database,
    postgresql_test_url,
    run_maintenance,
)
from tests.support.stack import Stack, Stacks, processes_of, stacks, wait_for

REPOSITORY = Path(__file__).resolve().parents[2]
CI_POSTGRES = REPOSITORY / ".ci" / "postgres"
HANG_GUARD_S = 90.0
NODES = ("node-a", "node-b")
JOBS = 60
CREATIONS = 100
# A step's command that no other process on the machine runs: found in /proc by it.
LONG_STEP = "sleep 97.531"
CANARY = "canary-7f3e-two-nodes-plaintext"


def _postgresql_bindir() -> Path | None:
    """Where initdb and pg_ctl are, as `.ci/postgres` finds them; None if absent."""
    candidates = [Path("/usr/lib/postgresql/15/bin")]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        candidates.append(Path(found))
    versions = Path("/usr/lib/postgresql")
    if versions.is_dir():
        candidates.extend(sorted(path / "bin" for path in versions.iterdir()))
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


BINDIR = _postgresql_bindir()

pytestmark = pytest.mark.skipif(
    BINDIR is None and not postgresql_test_url(),
    reason="needs PostgreSQL: install the server binaries (apt-get install postgresql-15) "
    "or set DANUBE_TEST_DATABASE_URL",
)


@dataclass
class Server:
    """The PostgreSQL the nodes share: its URL, and the socket directory holding its data
    directory when this module started it (None on a server given by URL)."""

    url: str
    directory: Path | None

    def own_only(self) -> None:
        if self.directory is None:
            pytest.skip("needs the server's files and pg_ctl: a server this test starts")

    def pg_ctl(self, *args: str) -> None:
        assert self.directory is not None
        assert BINDIR is not None
        command = [str(BINDIR / "pg_ctl"), f"--pgdata={self.directory / 'data'}", *args]
        if os.getuid() == 0:
            # PostgreSQL refuses root; `.ci/postgres` runs it as this account.
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if BINDIR is None:
        base = postgresql_test_url()
        own = create_empty_database(base)
        try:
            yield Server(own, None)
        finally:
            drop_database(base, own)
        return
    parent = Path(tempfile.mkdtemp(dir="/tmp", prefix="dpg"))
    # The server's account (not root, which PostgreSQL refuses) must reach the directory.
    parent.chmod(0o755)
    directory = parent / "pg"
    started = subprocess.run(
        [str(CI_POSTGRES), "start", str(directory)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    try:
        yield Server(started.stdout.strip(), directory)
    finally:
        subprocess.run(
            [str(CI_POSTGRES), "stop", str(directory)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(parent, ignore_errors=True)


def write_node_config(home: Path, port: int, url: str, node: str) -> None:
    """A danube.toml like harness.write_config's, on the shared database, as `node`, with
    a short lease so that a lost worker's job ends within seconds."""
    (home / "danube.toml").write_text(
        f"""\
[log]
level = "info"
format = "json"

[database]
path = "{home}/data/danube.db"
url = "{url}"

[keyd]
key_path = "{home}/keys/encryption.key"
socket_dir = "{home}/run"
audit_path = "{home}/log/keyd-audit.log"
request_timeout_ms = 1000

[api]
host = "127.0.0.1"
port = {port}
node = "{node}"
worker_timeout_s = 4

[worker]
token_file = "{home}/worker.token"
workdir = "{home}/work"
heartbeat_s = 1
claim_wait_s = 5
""",
        encoding="utf-8",
    )


def copy_key(source: Stack, target: Stack) -> None:
    """The node's key, copied as docs/operations.md says: owner-only, same bytes."""
    target.key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.key_path.write_bytes(source.key_path.read_bytes())
    target.key_path.chmod(0o600)


@dataclass
class Nodes:
    a: Stack
    b: Stack
    started: Stacks

    @property
    def both(self) -> tuple[Stack, Stack]:
        return (self.a, self.b)


def _start_node(started: Stacks, url: str, node: str, key_from: Stack | None) -> Stack:
    home, port = started.home()
    write_node_config(home, port, url, node)
    stack = Stack(home, port)
    if key_from is not None:
        copy_key(key_from, stack)
    process = started.up(home, "--workers", "2")
    assert process.wait_for_url() == stack.url, process.describe()
    _start_workers(stack)
    return stack


def _start_workers(stack: Stack) -> None:
    """Start the workers that are not running. On main, workers start beside the API and
    exit (refused, not restarted) before `danube up` has written their token on its first
    run; once `danube up` restarts them itself this finds them running and does nothing."""
    proxy = xmlrpc.client.ServerProxy(
        "http://localhost",
        transport=TimedSupervisorTransport(stack.layout.supervisor_socket, 60.0),
    )
    with proxy:
        proxy.supervisor.startProcessGroup("worker", True)


@pytest.fixture(scope="module")
def nodes(server: Server) -> Iterator[Nodes]:
    with stacks() as started:
        a = _start_node(started, server.url, NODES[0], None)
        b = _start_node(started, server.url, NODES[1], a)
        yield Nodes(a, b, started)


def _team_and_pipeline(stack: Stack, tag: str, command: str) -> tuple[str, str]:
    with stack.client() as client:
        team = client.post("/api/v1/teams", json={"name": f"team-{tag}"})
        assert team.status_code == 201, team.text
        pipeline = client.post(
            f"/api/v1/teams/{team.json()['id']}/pipelines",
            json={"name": f"pipeline-{tag}", "steps": [{"name": "run", "command": command}]},
        )
        assert pipeline.status_code == 201, pipeline.text
        return team.json()["id"], pipeline.json()["id"]


def _create_job(stack: Stack, pipeline_id: str) -> dict[str, Any]:
    with stack.client() as client:
        created = client.post(f"/api/v1/pipelines/{pipeline_id}/jobs")
        assert created.status_code == 201, created.text
        return created.json()


def _jobs_of(stack: Stack, pipeline_id: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    with stack.client() as client:
        while True:
            page = client.get(
                f"/api/v1/pipelines/{pipeline_id}/jobs", params={"limit": 100, "offset": len(jobs)}
            )
            assert page.status_code == 200, page.text
            items = page.json()["items"]
            jobs.extend(items)
            if len(items) < 100:
                return jobs


def _job(stack: Stack, job_id: str) -> dict[str, Any]:
    with stack.client() as client:
        response = client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()


FINAL = {"succeeded", "failed", "cancelled"}


def test_sixty_jobs_through_two_nodes_run_once_each(nodes: Nodes, tmp_path: Path):
    runs = tmp_path / "runs.txt"
    tmp_path.chmod(0o777)
    _, pipeline_id = _team_and_pipeline(nodes.a, "sixty", f'echo "$DANUBE_JOB_ID" >> {runs}')
    created = [_create_job(nodes.both[n % 2], pipeline_id)["id"] for n in range(JOBS)]

    def all_final() -> list[dict[str, Any]] | None:
        jobs = _jobs_of(nodes.b, pipeline_id)
        return jobs if all(job["status"] in FINAL for job in jobs) else None

    jobs = wait_for(all_final, HANG_GUARD_S, "60 jobs to finish", interval=0.5)
    assert sorted(job["id"] for job in jobs) == sorted(created)
    assert {job["status"] for job in jobs} == {"succeeded"}
    assert {job["node"] for job in jobs} <= set(NODES)
    lines = runs.read_text().split()
    assert len(lines) == JOBS
    assert sorted(lines) == sorted(created)


def test_a_hundred_concurrent_creations_through_both_nodes_number_1_to_100(nodes: Nodes):
    _, pipeline_id = _team_and_pipeline(nodes.a, "numbers", "true")
    with ThreadPoolExecutor(max_workers=20) as pool:
        made = list(
            pool.map(lambda n: _create_job(nodes.both[n % 2], pipeline_id), range(CREATIONS))
        )
    assert sorted(job["number"] for job in made) == list(range(1, CREATIONS + 1))


def _ancestors(pid: int) -> list[int]:
    """`pid`'s parent, its parent, ... up to init."""
    found: list[int] = []
    while pid > 1:
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        found.append(pid)
    return found


def _long_step_pid() -> int | None:
    wanted = LONG_STEP.encode().split()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes().split(b"\0")[:-1] == wanted:
                    return int(entry.name)
    return None


def test_a_killed_worker_has_its_job_failed_once_by_one_sweep(nodes: Nodes):
    _, pipeline_id = _team_and_pipeline(nodes.a, "killed", LONG_STEP)
    job_id = _create_job(nodes.a, pipeline_id)["id"]
    step_pid = wait_for(_long_step_pid, HANG_GUARD_S, "the long step to start", interval=0.2)
    running = _job(nodes.a, job_id)
    assert running["status"] == "running"
    stack = nodes.a if running["node"] == NODES[0] else nodes.b
    # The worker is the step's nearest ancestor that is a worker of the node's home.
    own = set(processes_of(stack.home))
    chain = _ancestors(step_pid)
    worker_pid = next(
        pid
        for pid in chain
        if pid in own and b"danube-worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    # The worker first, so it cannot end its job; then its orphaned step processes.
    os.kill(worker_pid, signal.SIGKILL)
    for pid in [step_pid, *chain[: chain.index(worker_pid)]]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def ended() -> dict[str, Any] | None:
        job = _job(nodes.b, job_id)
        return job if job["status"] in FINAL else None

    job = wait_for(ended, HANG_GUARD_S, "the lost worker's job to be failed", interval=0.25)
    assert job["status"] == "failed"
    assert job["reason"] == "worker lost"
    # Both APIs sweep; let a few more rounds of each pass, then count who ended it.
    time.sleep(3)
    lost = [
        record
        for node in nodes.both
        for record in node.log_records("api")
        if record.get("message") == "worker lost" and record.get("job_id") == job_id
    ]
    assert len(lost) == 1, lost
    assert _job(nodes.a, job_id)["finished_at"] == job["finished_at"]


def test_no_plaintext_secret_in_the_postgresql_data_directory(nodes: Nodes, server: Server):
    server.own_only()
    assert server.directory is not None
    team_id, pipeline_id = _team_and_pipeline(nodes.a, "hygiene", "true")
    with nodes.b.client() as client:
        for path in (
            f"/api/v1/teams/{team_id}/secrets/TEAM_CANARY",
            f"/api/v1/pipelines/{pipeline_id}/secrets/PIPELINE_CANARY",
        ):
            stored = client.put(path, json={"value": CANARY})
            assert stored.status_code in (200, 201), stored.text
    _create_job(nodes.a, pipeline_id)
    run_maintenance(server.url, "CHECKPOINT")
    data = server.directory / "data"
    scanned = 0
    for path in data.rglob("*"):
        if stat.S_ISREG(path.lstat().st_mode):
            scanned += 1
            assert CANARY.encode() not in path.read_bytes(), path
    assert scanned > 100


def _statuses(stack: Stack) -> tuple[int, int]:
    with stack.client(5.0) as client:
        try:
            return client.get("/api/v1/teams").status_code, client.get("/readyz").status_code
        except httpx.TransportError:
            return 0, 0


def test_the_database_down_then_back_gives_503s_then_recovers_without_restart(
    nodes: Nodes, server: Server
):
    server.own_only()
    _, pipeline_id = _team_and_pipeline(nodes.a, "outage", "true")
    api_pids = [node.program("api").pid for node in nodes.both]
    server.pg_ctl("--mode=fast", "--wait", "stop")
    try:
        for node in nodes.both:
            statuses = wait_for(
                lambda node=node: _statuses(node)[0] == 503 and _statuses(node),
                HANG_GUARD_S,
                "a 503 while the database is down",
                interval=0.25,
            )
            assert statuses == (503, 503)
    finally:
        log = server.directory / "restart.log" if server.directory else Path("/dev/null")
        server.pg_ctl(f"--log={log}", "--wait", "--timeout=60", "start")
    for node in nodes.both:
        wait_for(
            lambda node=node: _statuses(node) == (200, 200),
            HANG_GUARD_S,
            "the API to serve again",
            interval=0.25,
        )
    job_id = _create_job(nodes.b, pipeline_id)["id"]
    job = wait_for(
        lambda: (found := _job(nodes.a, job_id))["status"] in FINAL and found,
        HANG_GUARD_S,
        "a job after the outage to finish",
        interval=0.25,
    )
    assert job["status"] == "succeeded"
    assert [node.program("api").pid for node in nodes.both] == api_pids


def test_a_node_without_the_sites_key_is_refused_and_writes_none(nodes: Nodes, server: Server):
    """A third home on the same database, its key not copied: `danube up` exits 2 saying
    to copy the key, writes no key of its own (that would split the site's keys), and
    leaves no process behind."""
    home, port = nodes.started.home()
    write_node_config(home, port, server.url, "node-c")

    up = nodes.started.up(home, "--workers", "0")
    assert up.wait(HANG_GUARD_S) == 2, up.describe()
    assert "already holds Danube's users or secrets" in up.stderr.text, up.describe()
    assert "Running more than one node" in up.stderr.text
    assert not (home / "keys" / "encryption.key").exists()
    assert processes_of(home) == []
