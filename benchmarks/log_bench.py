"""The `log_ingest` target: bytes per second of 64 KiB log appends on one keep-alive
connection through the real worker log route (`POST /jobs/{id}/steps/{n}/log?offset=`,
a worker token, a job that worker claimed), over POSTs of the same bodies to a bare app
on the same server stack that discards them (`benchmarks/bare_http.py`, `POST /discard`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.api_bench import HOST, make_pipeline, post_json
from benchmarks.http_load import read_response
from benchmarks.processes import CpuShare, cpu_share, free_port, python_module, running
from benchmarks.report import Report
from benchmarks.stack import danube_stack, programs_use_database, wait_http_ok

CHUNK = 64 * 1024
# A step's log holds at most 16 MiB by default (`api.max_log_bytes`): 256 appends.
MAX_APPENDS_PER_STEP = 256


@dataclass
class Sizes:
    repeats: int
    appends: int


QUICK = Sizes(repeats=3, appends=128)
FULL = Sizes(repeats=5, appends=256)


def _post_bytes(path: str, host: str, body: bytes, token: str | None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    head += f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _send_all(port: int, requests: list[bytes]) -> float:
    """Send `requests` one after the other on one connection; bytes of body per second."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        start = time.perf_counter()
        for request in requests:
            writer.write(request)
            status, body = await asyncio.wait_for(read_response(reader), 30)
            if status != 200:
                raise RuntimeError(f"append answered {status}: {body[:200]!r}")
        return len(requests) * CHUNK / (time.perf_counter() - start)
    finally:
        writer.close()
        await writer.wait_closed()


def _storage_floor(database: Path, job_id: str, body: bytes, count: int) -> float:
    """Median seconds to store one chunk with nothing else: raw `sqlite3` on the stack's
    own database (its WAL, its `synchronous=NORMAL`, the real `log_chunks` table and
    indexes), one `BEGIN IMMEDIATE`, the chunk's INSERT and the COMMIT per append; no
    HTTP, no thread, no check of the job or move of the step's length, no checkpoint.

    Whatever an append route does, it does what the bare app does (read and answer the
    request) and then at least this before it may answer, one after the other on one
    connection: so `bare / (bare + floor)` bounds what `log_ingest` can reach here."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA wal_autocheckpoint=0")  # the API checkpoints on a thread
        (step_id,) = connection.execute(
            "SELECT id FROM steps WHERE job_id = ? AND position = 0", (job_id,)
        ).fetchone()
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
        times: list[float] = []
        for n in range(count):
            # Offsets far past the log's own, so the rows never meet the route's.
            row = (uuid.uuid4().hex, step_id, 2**40 + n * len(body), body, now)
            start = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                'INSERT INTO log_chunks (id, step_id, "offset", data, created_at) '
                "VALUES (?, ?, ?, ?, ?)",
                row,
            )
            connection.execute("COMMIT")
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        connection.close()


async def _claimed_job(port: int, admin: str, pipeline_id: str, worker: str) -> str:
    await post_json(port, f"/api/v1/pipelines/{pipeline_id}/jobs", {}, admin)
    claimed = await post_json(port, "/api/v1/worker/claim?wait=0", None, worker, expect=200)
    job = claimed["job"]
    if not isinstance(job, dict):
        raise TypeError("claim answered no job")
    return str(job["id"])  # pyright: ignore[reportUnknownArgumentType] -- parsed JSON


def run(report: Report, sizes: Sizes, *, database_url: str | None = None) -> None:
    """The target on SQLite; with `database_url` (an empty PostgreSQL database) the same
    measurement as an informational line (DESIGN 15)."""
    engine = "SQLite" if database_url is None else "PostgreSQL"
    appends = min(sizes.appends, MAX_APPENDS_PER_STEP)
    # Output-like bytes: random, so nothing in the path can shortcut on them.
    body = os.urandom(CHUNK)
    bare_port = free_port()
    with (
        programs_use_database(database_url),
        running(python_module("benchmarks.bare_http", str(bare_port))) as bare,
        danube_stack() as stack,
    ):
        wait_http_ok(f"http://{HOST}:{bare_port}/ping", 30)
        admin = stack.token
        pipeline_id = asyncio.run(make_pipeline(stack.port, admin))
        made = asyncio.run(post_json(stack.port, "/api/v1/workers", {"name": "bench"}, admin))
        worker = str(made["token"])
        bare_requests = [
            _post_bytes("/discard", f"{HOST}:{bare_port}", body, None) for _ in range(appends)
        ]
        api_pid = stack.api.pid if stack.api is not None else 0
        bare_rates: list[float] = []
        log_rates: list[float] = []
        ratios: list[float] = []
        api_cpu: list[CpuShare] = []
        bare_cpu: list[CpuShare] = []
        job_ids: list[str] = []
        asyncio.run(_send_all(bare_port, bare_requests[:16]))  # warm-up
        for _ in range(sizes.repeats):
            job_id = asyncio.run(_claimed_job(stack.port, admin, pipeline_id, worker))
            job_ids.append(job_id)
            host = f"{HOST}:{stack.port}"
            log_requests = [
                _post_bytes(
                    f"/api/v1/jobs/{job_id}/steps/0/log?offset={n * CHUNK}", host, body, worker
                )
                for n in range(appends)
            ]
            with cpu_share(bare.pid, into=bare_cpu):
                bare_rate = asyncio.run(_send_all(bare_port, bare_requests))
            with cpu_share(api_pid, into=api_cpu):
                log_rate = asyncio.run(_send_all(stack.port, log_requests))
            bare_rates.append(bare_rate)
            log_rates.append(log_rate)
            ratios.append(log_rate / bare_rate)
        floor = (
            _storage_floor(stack.home / "data" / "danube.db", job_ids[-1], body, appends)
            if database_url is None and job_ids
            else None
        )
    ratio = statistics.median(ratios)
    if database_url is None:
        report.target("log_ingest", ratio, 0.5, higher_is_better=True)
    report.raw(
        f"log_ingest ({engine}, {ratio:.3g} of bare): {appends} appends of 64 KiB, {statistics.median(log_rates) / 2**20:.1f} "
        f"MiB/s through the log route, {statistics.median(bare_rates) / 2**20:.1f} MiB/s to "
        f"the bare app, ratios [{', '.join(f'{r:.2f}' for r in ratios)}]; "
        f"log {api_cpu[-1].describe()}; bare {bare_cpu[-1].describe()}"
    )
    if floor is not None:
        bare_s = CHUNK / statistics.median(bare_rates)
        route_s = CHUNK / statistics.median(log_rates)
        report.raw(
            f"log_ingest (SQLite): per append the bare app {bare_s * 1e6:.0f} us, the route "
            f"{route_s * 1e6:.0f} us; storing the 64 KiB alone (raw sqlite3 INSERT and COMMIT "
            f"on the same database, no HTTP, no thread) {floor * 1e6:.0f} us, so no route "
            f"can pass {bare_s / (bare_s + floor):.2f} here"
        )
