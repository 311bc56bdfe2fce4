"""The `job_e2e` target: jobs per second through the whole path (create, claim, the
job's secrets from keyd, one step `true`, its log, finish) with 2 real `danube-worker`
processes under `danube up --workers 2`, over 2 loops each spawning `/bin/sh -c true`
one after the other.

Also the figure with no target yet: claim-to-start latency (job created to its step
`running`, as the API records it) p50 and p99 with an idle worker long-polling; and, for
what bounds the rate, the same parts of a job's life over the jobs of the timed runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from benchmarks.api_bench import HOST, post_json
from benchmarks.http_load import build_request, request_once
from benchmarks.processes import cpu_seconds, free_port, running
from benchmarks.report import Report
from benchmarks.stack import (
    program,
    programs_use_database,
    stack_home,
    wait_http_ok,
    write_config,
)

WORKERS = 2
FINAL = {"succeeded", "failed", "cancelled"}
# How often the throughput run looks at its last job; the figure comes from the API's
# timestamps, so this sets only how soon the run notices the end, not the figure.
WATCH_EVERY_S = 0.1


@dataclass
class Sizes:
    repeats: int
    jobs: int
    latency_samples: int


QUICK = Sizes(repeats=3, jobs=40, latency_samples=10)
FULL = Sizes(repeats=5, jobs=100, latency_samples=30)


def _spawn_loops(count: int) -> tuple[float, float]:
    """`count` spawns of `/bin/sh -c true` split over 2 loops: spawns per second, and the
    CPU seconds per spawn (this process's and its shells')."""

    def loop(n: int) -> None:
        for _ in range(n):
            subprocess.run(["/bin/sh", "-c", "true"], check=True)

    threads = [threading.Thread(target=loop, args=(count // 2,)) for _ in range(2)]
    before = os.times()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    after = os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # user, system, children's user and system
    spawns = count // 2 * 2
    return spawns / elapsed, cpu / spawns


async def _get_json(port: int, path: str, token: str) -> dict[str, object]:
    status, raw = await request_once(
        HOST, port, build_request("GET", path, f"{HOST}:{port}", token=token)
    )
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {raw[:200]!r}")
    parsed: dict[str, object] = json.loads(raw)
    return parsed


async def _wait_final(
    port: int, job_id: str, token: str, deadline: float, *, every_s: float = 0.01
) -> dict[str, object]:
    while time.monotonic() < deadline:
        job = await _get_json(port, f"/api/v1/jobs/{job_id}", token)
        if job["status"] in FINAL:
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['status']}")
            return job
        await asyncio.sleep(every_s)
    raise TimeoutError(f"job {job_id} did not finish in time")


async def _jobs_per_second(
    port: int, pipeline: str, token: str, count: int, pids: dict[str, int]
) -> tuple[float, list[dict[str, object]], dict[str, float]]:
    """`count` jobs created back to back, over the time from the first create to the last
    job's `finished_at` (the API's own clock, the same host's).

    The watcher stays out of the way: it looks at the last job created every
    `WATCH_EVERY_S`, then reads each job once to check it succeeded and take its end.
    Returns the rate, the jobs as they ended, and the CPU seconds each of `pids` used from
    the first create until the watcher saw the last job end (before its reads of the
    others, which are not part of the path).
    Polling every job every 10 ms, as this once did, was a third of the API's requests
    and of its CPU during the run, and was not part of the path being measured."""
    cpu0 = {name: _cpu(pid) for name, pid in pids.items()}
    start = time.time()
    ids = [
        str((await post_json(port, f"/api/v1/pipelines/{pipeline}/jobs", {}, token))["id"])
        for _ in range(count)
    ]
    deadline = time.monotonic() + 120
    last = await _wait_final(port, ids[-1], token, deadline, every_s=WATCH_EVERY_S)
    used = {name: _cpu(pid) - cpu0[name] for name, pid in pids.items()}
    ended = [last] + [
        await _wait_final(port, job_id, token, deadline, every_s=WATCH_EVERY_S)
        for job_id in ids[:-1]
    ]
    end = max(_stamp(job["finished_at"]).timestamp() for job in ended)
    return count / (end - start), ended, used


def _stamp(value: object) -> datetime:
    return datetime.fromisoformat(str(value))


@dataclass
class Parts:
    """Where one job's time went, by the API's own timestamps (seconds)."""

    to_claim: float  # created -> claimed (the job's started_at)
    to_step: float  # claimed -> its step running (secrets from keyd, the spawn)
    step: float  # the step running -> final
    to_finish: float  # the step final -> the job finished (log flush, finish)


def _parts(job: dict[str, object]) -> Parts:
    steps = job["steps"]
    if not isinstance(steps, list) or not steps:
        raise RuntimeError("a finished job with no steps")
    step: dict[str, object] = steps[0]  # pyright: ignore[reportUnknownVariableType] -- parsed JSON
    created, claimed = _stamp(job["created_at"]), _stamp(job["started_at"])
    started, ended = _stamp(step["started_at"]), _stamp(step["finished_at"])
    finished = _stamp(job["finished_at"])
    return Parts(
        (claimed - created).total_seconds(),
        (started - claimed).total_seconds(),
        (ended - started).total_seconds(),
        (finished - ended).total_seconds(),
    )


async def _claim_to_start(port: int, pipeline: str, token: str, samples: int) -> list[Parts]:
    """One job at a time, the workers idle and long-polling: where each job's time went."""
    found: list[Parts] = []
    for _ in range(samples):
        await asyncio.sleep(0.05)  # let both workers go back to their long poll
        made = await post_json(port, f"/api/v1/pipelines/{pipeline}/jobs", {}, token)
        job = await _wait_final(port, str(made["id"]), token, time.monotonic() + 30)
        found.append(_parts(job))
    return found


def _medians(parts: list[Parts]) -> dict[str, float]:
    return {
        name: statistics.median(getattr(p, name) for p in parts)
        for name in ("to_claim", "to_step", "step", "to_finish")
    }


def _descendants(pid: int) -> dict[str, int]:
    """The processes under `pid` (supervisord and its programs), named by their
    program and pid."""
    found: dict[str, int] = {}
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
            children = [int(c) for t in tasks for c in (t / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [Path(a.decode(errors="replace")).name for a in argv if a]
            name = next((w for w in words if w.startswith(("danube", "supervisord"))), words[0])
            found[f"{name}:{child}"] = child
            pending.append(child)
    return found


def _cpu(pid: int) -> float:
    """CPU seconds of `pid` and of the children it reaped (a worker's shells)."""
    try:
        return cpu_seconds(pid, children=True)
    except OSError:
        return 0.0


async def _setup(port: int, token: str) -> str:
    team = await post_json(port, "/api/v1/teams", {"name": "e2e"}, token)
    status, raw = await request_once(
        HOST,
        port,
        build_request(
            "PUT",
            f"/api/v1/teams/{team['id']}/secrets/BENCH_TOKEN",
            f"{HOST}:{port}",
            json.dumps({"value": "s3cr3t-value-for-the-bench"}).encode(),
            token,
        ),
    )
    if status not in (200, 201, 204):
        raise RuntimeError(f"PUT secret answered {status}: {raw[:200]!r}")
    pipeline = await post_json(
        port,
        f"/api/v1/teams/{team['id']}/pipelines",
        {"name": "e2e", "steps": [{"name": "true", "command": "true"}]},
        token,
    )
    return str(pipeline["id"])


def _bootstrap(home: Path, port: int) -> str:
    """A first `danube up`, with no worker, writes the admin's and the worker's token
    files, so the timed runs start from a home that has them; the site admin's token."""
    with running([program("danube"), "up", "--home", str(home), "--workers", "0"]):
        wait_http_ok(f"http://{HOST}:{port}/readyz", 60)
        token_file = home / "admin.token"
        deadline = time.monotonic() + 30
        while not token_file.exists() or not token_file.read_text().strip():
            if time.monotonic() > deadline:
                raise TimeoutError("danube up wrote no admin token")
            time.sleep(0.05)
        return token_file.read_text().strip()


def run(report: Report, sizes: Sizes, *, database_url: str | None = None) -> None:
    """The target on SQLite; with `database_url` (an empty PostgreSQL database) the same
    measurement as informational lines (DESIGN 15)."""
    engine = "SQLite" if database_url is None else "PostgreSQL"
    with stack_home() as home, programs_use_database(database_url):
        port = free_port()
        write_config(home, port)
        token = _bootstrap(home, port)
        up = [program("danube"), "up", "--home", str(home), "--workers", str(WORKERS)]
        with running(up, log=home / "up.log") as stack:
            wait_http_ok(f"http://{HOST}:{port}/readyz", 60)
            pipeline = asyncio.run(_setup(port, token))
            asyncio.run(_jobs_per_second(port, pipeline, token, 4, {}))  # warm-up
            pids = _descendants(stack.pid)
            e2e_rates: list[float] = []
            busy: list[Parts] = []
            spawn_rates: list[float] = []
            spawn_cpus: list[float] = []
            ratios: list[float] = []
            used: dict[str, float] = dict.fromkeys(pids, 0.0)
            wall = 0.0
            for _ in range(sizes.repeats):
                spawn, spawn_cpu = _spawn_loops(sizes.jobs * 10)
                spawn_cpus.append(spawn_cpu)
                rate, ended, cpu = asyncio.run(
                    _jobs_per_second(port, pipeline, token, sizes.jobs, pids)
                )
                busy.extend(_parts(job) for job in ended)
                wall += sizes.jobs / rate
                for name, seconds in cpu.items():
                    used[name] += seconds
                e2e_rates.append(rate)
                spawn_rates.append(spawn)
                ratios.append(rate / spawn)
            shares = {name: seconds / wall for name, seconds in used.items()}
            latencies = asyncio.run(_claim_to_start(port, pipeline, token, sizes.latency_samples))
    ratio = statistics.median(ratios)
    if database_url is None:
        report.target("job_e2e", ratio, 0.1, higher_is_better=True)
    busiest = ", ".join(
        f"{name} {share:.0%}" for name, share in sorted(shares.items(), key=lambda kv: -kv[1])
    )
    report.raw(
        f"job_e2e ({engine}, {ratio:.3g} of bare): {statistics.median(e2e_rates):.1f} jobs/s "
        f"with {WORKERS} workers, "
        f"{statistics.median(spawn_rates):.0f} spawns/s of /bin/sh -c true in 2 loops, "
        f"ratios [{', '.join(f'{r:.3f}' for r in ratios)}]; cpu of one core during the jobs: "
        f"{busiest}"
    )
    api_cpu = sum(seconds for name, seconds in used.items() if name.startswith("danube-api"))
    per_job = api_cpu / (sizes.jobs * sizes.repeats)
    all_per_job = sum(used.values()) / (sizes.jobs * sizes.repeats)
    report.raw(
        f"job_e2e ({engine}): CPU per job {per_job * 1e3:.2f} ms in the API, "
        f"{all_per_job * 1e3:.2f} ms in all of Danube's processes (the steps' shells "
        f"included), {all_per_job / statistics.median(spawn_cpus):.1f} times a spawn's "
        f"{statistics.median(spawn_cpus) * 1e3:.2f} ms; the API is one process, its threads "
        f"under one GIL, so at that cost it serves at most {1 / per_job:.0f} jobs/s, a "
        f"ratio of {1 / per_job / statistics.median(spawn_rates):.3g}"
    )
    report.raw(
        f"job_e2e ({engine}): median per part of a job during the runs (the workers busy): "
        + ", ".join(f"{name} {value * 1e3:.1f} ms" for name, value in _medians(busy).items())
    )
    to_start = sorted(p.to_claim + p.to_step for p in latencies)
    p99 = to_start[min(len(to_start) - 1, round(0.99 * len(to_start)) - 1)]
    medians = _medians(latencies)
    report.raw(
        f"claim-to-start ({engine}; job created to its step running, idle workers "
        "long-polling): "
        f"p50 {statistics.median(to_start) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms over "
        f"{len(to_start)} jobs (no target yet); median per part: "
        + ", ".join(f"{name} {value * 1e3:.0f} ms" for name, value in medians.items())
    )
