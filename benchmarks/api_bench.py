"""The API targets: `api_create_job` (POST jobs per second on one keep-alive connection,
over a bare `GET /ping` on the same server stack), `api_write_tail` (p99 over p50 of POST
jobs with 32 concurrent clients, and their errors), and the unreported-target figure for
`GET /api/v1/jobs/{id}`.

On PostgreSQL (DESIGN 15) the same three figures are informational lines beside the
SQLite ones (`python -m benchmarks --only postgres` starts a server itself), or on an
empty database you name (the programs get it as `DANUBE_DATABASE__URL`):

    URL=$(.ci/postgres start /tmp/danube-bench-pg)
    uv run python -m benchmarks.api_bench --database-url "$URL" [--quick]
    .ci/postgres stop /tmp/danube-bench-pg
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from dataclasses import dataclass

from benchmarks.http_load import LoadResult, build_request, request_once, run_load
from benchmarks.processes import CpuShare, cpu_share, free_port, python_module, rss_mib, running
from benchmarks.report import Report
from benchmarks.stack import Stack, danube_stack, programs_use_database, wait_http_ok

HOST = "127.0.0.1"


@dataclass
class Sizes:
    repeats: int
    single_requests: int
    tail_requests: int
    max_seconds: float


QUICK = Sizes(repeats=3, single_requests=400, tail_requests=1600, max_seconds=10)
FULL = Sizes(repeats=5, single_requests=2000, tail_requests=6400, max_seconds=30)


async def post_json(
    port: int, path: str, body: object, token: str, *, expect: int = 201
) -> dict[str, object]:
    data = b"" if body is None else json.dumps(body).encode()
    status, raw = await request_once(
        HOST, port, build_request("POST", path, f"{HOST}:{port}", data, token)
    )
    if status != expect:
        raise RuntimeError(f"POST {path} answered {status}: {raw[:200]!r}")
    parsed: dict[str, object] = json.loads(raw)
    return parsed


async def make_pipeline(port: int, token: str) -> str:
    team = await post_json(port, "/api/v1/teams", {"name": "bench"}, token)
    pipeline = await post_json(
        port,
        f"/api/v1/teams/{team['id']}/pipelines",
        {
            "name": "build",
            "steps": [
                {"name": "checkout", "command": "git checkout"},
                {"name": "test", "command": "make test"},
                {"name": "publish", "command": "make publish"},
            ],
        },
        token,
    )
    return str(pipeline["id"])


def _load(port: int, request: bytes, connections: int, count: int, max_s: float) -> LoadResult:
    return asyncio.run(
        run_load(HOST, port, request, connections=connections, requests=count, max_seconds=max_s)
    )


@dataclass
class Target:
    """The servers under load and the pre-built requests they get."""

    stack: Stack
    api_pid: int
    bare_pid: int
    ping_port: int
    ping: bytes
    create: bytes


def run(report: Report, sizes: Sizes, *, database_url: str | None = None) -> None:
    """The targets on SQLite; with `database_url` (an empty PostgreSQL database: the
    stack migrates it and creates its admin) the same figures as informational lines."""
    engine = "SQLite" if database_url is None else "PostgreSQL"
    ping_port = free_port()
    with (
        programs_use_database(database_url),
        running(python_module("benchmarks.bare_http", str(ping_port))) as bare,
        danube_stack() as stack,
    ):
        wait_http_ok(f"http://{HOST}:{ping_port}/ping", 30)
        pipeline_id = asyncio.run(make_pipeline(stack.port, stack.token))
        ping = build_request("GET", "/ping", f"{HOST}:{ping_port}")
        create = build_request(
            "POST",
            f"/api/v1/pipelines/{pipeline_id}/jobs",
            f"{HOST}:{stack.port}",
            b"{}",
            stack.token,
        )
        # Warm both servers up (imports, caches, the database's page cache).
        _load(ping_port, ping, 1, 300, sizes.max_seconds)
        _load(stack.port, create, 1, 300, sizes.max_seconds)

        api_pid = stack.api.pid if stack.api is not None else 0
        target = Target(stack, api_pid, bare.pid, ping_port, ping, create)
        _single_connection(report, sizes, target, engine=engine)
        _write_tail(report, sizes, target, engine=engine)
        _get_job(report, sizes, target, engine=engine)
        if database_url is None:
            report.raw(f"api rss after run: {rss_mib(api_pid):.1f} MiB")


def _single_connection(
    report: Report, sizes: Sizes, target: Target, *, engine: str = "SQLite"
) -> None:
    ping_rates: list[float] = []
    create_rates: list[float] = []
    ratios: list[float] = []
    jobs = base = LoadResult()
    ping_cpu: list[CpuShare] = []
    create_cpu: list[CpuShare] = []
    for _ in range(sizes.repeats):
        with cpu_share(target.bare_pid, into=ping_cpu):
            base = _load(target.ping_port, target.ping, 1, sizes.single_requests, sizes.max_seconds)
        with cpu_share(target.api_pid, into=create_cpu):
            jobs = _load(
                target.stack.port, target.create, 1, sizes.single_requests, sizes.max_seconds
            )
        if jobs.errors or base.errors:
            raise RuntimeError(f"errors: jobs {jobs.statuses}, ping {base.statuses}")
        ping_rates.append(base.rate)
        create_rates.append(jobs.rate)
        ratios.append(jobs.rate / base.rate)
    ratio = statistics.median(ratios)
    if engine == "SQLite":
        report.target("api_create_job", ratio, 0.25, higher_is_better=True)
    report.raw(
        f"api_create_job ({engine}, {ratio:.3g} of bare): POST jobs {statistics.median(create_rates):.0f}/s "
        f"(p50 {jobs.p50 * 1e3:.2f} ms), bare GET /ping {statistics.median(ping_rates):.0f}/s "
        f"(p50 {base.p50 * 1e3:.2f} ms), median of {sizes.repeats}; "
        f"jobs {create_cpu[-1].describe()}; ping {ping_cpu[-1].describe()}"
    )


def _write_tail(report: Report, sizes: Sizes, target: Target, *, engine: str = "SQLite") -> None:
    tails: list[float] = []
    errors = 0
    results: list[LoadResult] = []
    cpu: list[CpuShare] = []
    for _ in range(sizes.repeats):
        with cpu_share(target.api_pid, into=cpu):
            result = _load(
                target.stack.port, target.create, 32, sizes.tail_requests, sizes.max_seconds
            )
        results.append(result)
        errors += result.errors
        tails.append(result.percentile(99) / result.p50)
    tail = statistics.median(tails)
    if engine == "SQLite":
        report.target("api_write_tail", tail, 2.0, higher_is_better=False, errors=errors)
    middle = results[len(results) // 2]
    report.raw(
        f"api_write_tail ({engine}, p99/p50 {tail:.3g}, errors {errors}): 32 clients, {middle.rate:.0f} jobs/s, p50 {middle.p50 * 1e3:.1f} ms, "
        f"p99 {middle.percentile(99) * 1e3:.1f} ms, statuses {middle.statuses}; "
        f"{cpu[-1].describe()}"
    )


def _get_job(report: Report, sizes: Sizes, target: Target, *, engine: str = "SQLite") -> None:
    stack = target.stack
    status, raw = asyncio.run(request_once(HOST, stack.port, target.create))
    if status != 201:
        raise RuntimeError(f"creating a job answered {status}")
    job_id = json.loads(raw)["id"]
    get = build_request("GET", f"/api/v1/jobs/{job_id}", f"{HOST}:{stack.port}", token=stack.token)
    rates: list[float] = []
    for _ in range(sizes.repeats):
        result = _load(stack.port, get, 1, sizes.single_requests, sizes.max_seconds)
        rates.append(result.rate)
    report.raw(
        f"GET /api/v1/jobs/{{id}} ({engine}): {statistics.median(rates):.0f}/s on one connection "
        f"(no target yet)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.api_bench",
        description="api_create_job on PostgreSQL (informational)",
    )
    parser.add_argument("--database-url", required=True, help="an empty PostgreSQL database")
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats")
    args = parser.parse_args()
    report = Report()
    run(report, QUICK if args.quick else FULL, database_url=args.database_url)
    print("\n" + report.summary())


if __name__ == "__main__":
    main()
