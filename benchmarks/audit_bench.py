"""The audit chain's cost per audited request (issue 13's goal: at most 1 ms p99 added
to `job_secrets`): `uv run python -m benchmarks.audit_bench [--appends N] [--dir DIR]`.

Times `AuditLog.append` of a typical `job_secrets` line (ten secret names) in two modes,
against a baseline measured in the same run: a bare `os.write` of a line of the same
size to an `O_APPEND` file (what any log line costs at least).
- `sync=False` (keyd's default): the line reaches the kernel with one `write(2)` and the
  head is replaced by rename, both before the reply: survives keyd being killed.
- `sync=True`: the line is `fdatasync`ed and the head fsynced with its directory:
  survives a power loss too.

Not a registered target: it prints its figures and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from danube_keyd.audit import AuditLog

NAMES = [f"SECRET_{i:02d}" for i in range(10)]


def _timings(step: Callable[[], None], count: int) -> list[float]:
    """Microseconds per call of `step`, `count` times (after a short warm-up)."""
    for _ in range(min(count // 10, 100)):
        step()
    out: list[float] = []
    for _ in range(count):
        started = time.perf_counter_ns()
        step()
        out.append((time.perf_counter_ns() - started) / 1000)
    return out


def _summary(name: str, micros: list[float]) -> str:
    cuts = statistics.quantiles(micros, n=100)
    return (
        f"{name:<28} n={len(micros):<6} p50={cuts[49]:8.1f} us  p99={cuts[98]:8.1f} us  "
        f"max={max(micros):9.1f} us"
    )


def _audit_step(log: AuditLog) -> Callable[[], None]:
    def step() -> None:
        log.append(
            "job_secrets",
            uid=1000,
            pid=4242,
            job_id="0f9c2f3e-54a1-4f7e-9d0c-2b8f2c7f1a11",
            names=NAMES,
            key_ids=[bytes.fromhex("0a0b0c0d")],
            result="ok",
        )

    return step


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.audit_bench", description=__doc__)
    parser.add_argument("--appends", type=int, default=5000, help="appends per mode")
    parser.add_argument("--dir", type=Path, default=None, help="where the logs go (a temp dir)")
    args = parser.parse_args()
    count: int = args.appends
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="audit-bench-") as scratch:
        root = Path(scratch)
        print(f"# audit append latency, {count} appends per mode, files in {root}")
        line = b"x" * 400 + b"\n"
        fd = os.open(root / "baseline.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            print(_summary("baseline os.write", _timings(lambda: _write(fd, line), count)))
        finally:
            os.close(fd)
        key = os.urandom(32)
        for sync in (False, True):
            log = AuditLog.open(root / f"audit-sync-{sync}.log", key, sync=sync)
            try:
                print(_summary(f"append sync={sync}", _timings(_audit_step(log), count)))
            finally:
                log.close()
        size = (root / "audit-sync-False.log").stat().st_size
        print(f"# line size {size // (count + min(count // 10, 100))} bytes")


def _write(fd: int, line: bytes) -> None:
    os.write(fd, line)


if __name__ == "__main__":
    main()
