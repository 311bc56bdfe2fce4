"""`uv run python -m benchmarks [--quick] [--only NAME ...]`: measure every performance
target of DESIGN.md section 10 against its baseline in the same run, and (group
`postgres`) every HTTP figure (the API's, the log route's and job_e2e) again on a
throwaway PostgreSQL, for information.

Prints one `NAME value=X target=Y PASS|FAIL` line per target as it is measured, then the
raw figures. Exit status is 0 whatever the figures: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable

from benchmarks import api_bench, e2e_bench, keyd_bench, log_bench, mask_bench, startup
from benchmarks.postgres_server import PostgresUnavailable, new_database, throwaway_postgresql
from benchmarks.processes import machine_cpu_ticks, steal_share
from benchmarks.report import Report

GROUPS = ("keyd", "api", "log", "e2e", "startup", "mask", "postgres")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats")
    parser.add_argument("--only", choices=GROUPS, action="append", help="run only these groups")
    args = parser.parse_args()
    quick: bool = args.quick
    groups: list[str] = args.only or list(GROUPS)

    report = Report()
    print(
        f"# {platform.node()}: {platform.machine()}, {_cpus()} cpus, Python "
        f"{platform.python_version()}; {'quick' if quick else 'full'} run",
        flush=True,
    )
    runs: dict[str, Callable[[], None]] = {
        "keyd": lambda: keyd_bench.run(report, keyd_bench.QUICK if quick else keyd_bench.FULL),
        "api": lambda: api_bench.run(report, api_bench.QUICK if quick else api_bench.FULL),
        "log": lambda: log_bench.run(report, log_bench.QUICK if quick else log_bench.FULL),
        "e2e": lambda: e2e_bench.run(report, e2e_bench.QUICK if quick else e2e_bench.FULL),
        "startup": lambda: startup.run(report, 3 if quick else 5),
        "mask": lambda: mask_bench.run(report, mask_bench.QUICK if quick else mask_bench.FULL),
        "postgres": lambda: _postgresql(report, quick=quick),
    }
    shares: list[str] = []
    for group in GROUPS:
        if group in groups:
            ticks = machine_cpu_ticks()
            runs[group]()
            steal, busy = steal_share(ticks, machine_cpu_ticks())
            shares.append(f"{group} busy {busy:.0%}, steal {steal:.0%}")
    # A host short of CPU takes it from the guest's vCPUs: each side of a ratio then runs
    # slower by however much was taken in its turn.
    report.raw(
        "machine during each group (of the vCPUs' time: running this machine's work, taken "
        f"by the hypervisor): {'; '.join(shares)}"
    )
    print("\n" + report.summary())


def _postgresql(report: Report, *, quick: bool) -> None:
    """The informational PostgreSQL lines (DESIGN 15): the same measurements on a
    throwaway server, each on a new empty database."""
    try:
        with throwaway_postgresql() as url:
            api_bench.run(
                report,
                api_bench.QUICK if quick else api_bench.FULL,
                database_url=new_database(url, "bench_api"),
            )
            log_bench.run(
                report,
                log_bench.QUICK if quick else log_bench.FULL,
                database_url=new_database(url, "bench_log"),
            )
            e2e_bench.run(
                report,
                e2e_bench.QUICK if quick else e2e_bench.FULL,
                database_url=new_database(url, "bench_e2e"),
            )
    except PostgresUnavailable as exc:
        report.raw(f"PostgreSQL: not measured, the server did not start: {exc}")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
