"""The `startup` target: `danube up` on a fresh home until `/readyz` answers 200, over a
bare uvicorn app (the same stack: FastAPI, uvloop, httptools) until its first 200."""

from __future__ import annotations

import statistics

from benchmarks.processes import free_port, python_module, running
from benchmarks.report import Report
from benchmarks.stack import program, stack_home, wait_http_ok, write_config


def time_danube_up() -> float:
    with stack_home() as home:
        port = free_port()
        write_config(home, port)
        with running([program("danube"), "up", "--home", str(home)], log=home / "up.log"):
            return wait_http_ok(f"http://127.0.0.1:{port}/readyz", 60)


def time_bare_start() -> float:
    port = free_port()
    with running(python_module("benchmarks.bare_http", str(port))):
        return wait_http_ok(f"http://127.0.0.1:{port}/ping", 60)


def run(report: Report, repeats: int) -> None:
    # Alternate the two so that drift in the machine's load hits both alike.
    ups: list[float] = []
    bares: list[float] = []
    for _ in range(repeats):
        ups.append(time_danube_up())
        bares.append(time_bare_start())
    ratio = statistics.median(ups) / statistics.median(bares)
    report.target("startup", ratio, 3.0, higher_is_better=False)
    report.raw(
        f"startup: danube up (fresh home: keygen, migrate, supervisord, keyd, api) to /readyz "
        f"{statistics.median(ups):.2f} s [{', '.join(f'{t:.2f}' for t in ups)}]; bare uvicorn "
        f"to first 200 {statistics.median(bares):.2f} s [{', '.join(f'{t:.2f}' for t in bares)}]"
    )
