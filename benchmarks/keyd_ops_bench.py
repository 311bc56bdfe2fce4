"""Issue 13's keyd figures: `uv run python -m benchmarks.keyd_ops_bench [--keyd PATH]
[--requests N] [--calls N]`.

- **audit overhead**: `job_secrets` of ten 64-byte secrets handled by keyd's
  `Dispatcher` in process, p50/p99 with the real audit log (a line written before each
  reply) and with a trail that writes nothing, in the same run. The difference of the
  p99s is what the audit adds (the goal: at most 1 ms).
- **flood**: a real `danube-keyd` (the one at `--keyd`, so the one of another checkout
  can be measured too) with a job of 16 secrets of 64 KiB (replies of about 1 MiB), and a
  peer that sends `--requests` `job_secrets` and never reads a reply; keyd's VmRSS
  before and after, once keyd has served them all.

Not a registered target: it prints its figures and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import zmq

from danube_keyd.aead import Aead
from danube_keyd.audit import AuditLog, AuditVerdict
from danube_keyd.dispatcher import Dispatcher, Peer
from danube_keyd.encryption_counter import EncryptionCounter
from danube_keyd.keyring import Keyring
from danube_keyd.secret_cache import SecretCache
from danube_shared.config import LogSettings
from danube_shared.logs import configure_logging

TOKEN = "bench-token"  # noqa: S105 -- a job token made up for the benchmark


class _NoAudit:
    """An audit trail that records nothing: the baseline."""

    def append(
        self,
        op: str,
        *,
        uid: int | None,
        pid: int | None,
        job_id: str | None,
        names: Sequence[str],
        key_ids: Sequence[bytes],
        result: str,
    ) -> None:
        del op, uid, pid, job_id, names, key_ids, result

    def verify(self) -> AuditVerdict:
        return AuditVerdict(0, intact=True, first_bad_line=None, problem=None)


def _job_secrets_timings(root: Path, audit: Any, calls: int) -> list[float]:
    aead = Aead(os.urandom(32))
    dispatcher = Dispatcher(
        Keyring(active=aead, keys={aead.key_id: aead}),
        SecretCache(3600, max_jobs=10),
        boot_id="bench",
        counter=EncryptionCounter(root / "encryption.key"),
        audit=audit,
    )
    secrets = [
        {
            "name": f"SECRET_{i:02d}",
            "ciphertext": aead.encrypt(os.urandom(64), f"s:{i}"),
            "context": f"s:{i}",
        }
        for i in range(10)
    ]
    load = {
        "v": 1,
        "id": 1,
        "op": "job_load",
        "job_id": "job-bench",
        "token_sha256": hashlib.sha256(TOKEN.encode()).digest(),
        "ttl_s": 3600,
        "secrets": secrets,
    }
    dispatcher.handle("control", msgspec.msgpack.encode(load))
    request = msgspec.msgpack.encode(
        {"v": 1, "id": 2, "op": "job_secrets", "job_id": "job-bench", "token": TOKEN}
    )
    peer = Peer(uid=1000, pid=4242)
    for _ in range(min(calls // 10, 200)):
        dispatcher.handle("worker", request, peer)
    out: list[float] = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        reply = dispatcher.handle("worker", request, peer)
        out.append((time.perf_counter_ns() - started) / 1000)
        if len(reply) < 640:  # an error reply: the figures would mean nothing
            raise RuntimeError(f"job_secrets failed: {bytes(reply)!r}")
    return out


def _summary(name: str, micros: list[float]) -> tuple[str, float]:
    cuts = statistics.quantiles(micros, n=100)
    return (
        f"{name:<30} n={len(micros):<6} p50={cuts[49]:8.1f} us  p99={cuts[98]:8.1f} us",
        cuts[98],
    )


def audit_overhead(calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="keyd-ops-bench-") as scratch:
        root = Path(scratch)
        log = AuditLog.open(root / "keyd-audit.log", os.urandom(32))
        try:
            with_line, with_p99 = _summary(
                "job_secrets with audit", _job_secrets_timings(root, log, calls)
            )
        finally:
            log.close()
        without_line, without_p99 = _summary(
            "job_secrets without audit", _job_secrets_timings(root, _NoAudit(), calls)
        )
    print(without_line)
    print(with_line)
    print(f"audit p99 overhead on job_secrets: {with_p99 - without_p99:.1f} us")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _ask(sock: zmq.Socket[bytes], message: dict[str, Any], timeout_ms: int = 10_000) -> Any:
    sock.send_multipart([b"", msgspec.msgpack.encode(message)])
    if not sock.poll(timeout_ms):
        raise RuntimeError(f"keyd did not answer {message['op']}")
    return msgspec.msgpack.decode(sock.recv_multipart()[1])


@contextlib.contextmanager
def running_keyd(binary: Path, *, extra: str = "") -> Iterator[tuple[Path, int]]:
    """A keyd in a fresh home under /tmp: yields (socket dir, pid); killed and removed
    at the end. `extra` is appended to the config (another section)."""
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="kf"))
    keys = home / "keys"
    keys.mkdir(mode=0o700)
    fd = os.open(keys / "encryption.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    config = home / "danube.toml"
    config.write_text(
        f'[keyd]\nkey_path = "{keys}/encryption.key"\nsocket_dir = "{home}/run"\n'
        f'audit_path = "{home}/log/keyd-audit.log"\n{extra}'
    )
    process = subprocess.Popen(
        [str(binary), "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (home / "run" / "keyd-worker.sock").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("keyd did not start")
            time.sleep(0.05)
        yield home / "run", process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(home, ignore_errors=True)


def flood(binary: Path, requests: int) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    with running_keyd(binary) as (run, pid):
        control = context.socket(zmq.DEALER)
        control.setsockopt(zmq.LINGER, 0)
        control.connect(f"ipc://{run}/keyd.sock")
        flooder = context.socket(zmq.DEALER)
        flooder.setsockopt(zmq.LINGER, 0)
        flooder.setsockopt(zmq.RCVHWM, 1)
        flooder.setsockopt(zmq.RCVBUF, 4096)
        flooder.setsockopt(zmq.SNDHWM, requests + 10)
        try:
            items = [{"plaintext": os.urandom(64 * 1024), "context": f"s:{i}"} for i in range(16)]
            sealed = _ask(control, {"v": 1, "id": 1, "op": "encrypt", "items": items})["items"]
            secrets = [
                {"name": f"S{i}", "ciphertext": c, "context": f"s:{i}"}
                for i, c in enumerate(sealed)
            ]
            loaded = _ask(
                control,
                {
                    "v": 1,
                    "id": 2,
                    "op": "job_load",
                    "job_id": "flood",
                    "token_sha256": hashlib.sha256(TOKEN.encode()).digest(),
                    "ttl_s": 3600,
                    "secrets": secrets,
                },
            )
            if not loaded["ok"]:
                raise RuntimeError(f"job_load failed: {loaded}")
            before = _rss_kib(pid)
            flooder.connect(f"ipc://{run}/keyd-worker.sock")
            request = {"v": 1, "op": "job_secrets", "job_id": "flood", "token": TOKEN}
            started = time.monotonic()
            for request_id in range(requests):
                flooder.send_multipart([b"", msgspec.msgpack.encode({**request, "id": request_id})])
            while True:
                stats = _ask(control, {"v": 1, "id": 3, "op": "stats"})
                if stats["requests"].get("job_secrets", 0) >= requests:
                    break
                if time.monotonic() - started > 120:
                    raise RuntimeError(f"keyd served {stats['requests']} in 120 s")
                time.sleep(0.2)
            time.sleep(1.0)  # let libzmq settle what it queued
            after = _rss_kib(pid)
            print(
                f"flood of {requests} job_secrets (~1 MiB replies, never read) against {binary}: "
                f"RSS before {before / 1024:.0f} MiB, after {after / 1024:.0f} MiB "
                f"(+{(after - before) / 1024:.0f} MiB); dropped replies "
                f"{stats.get('dropped_replies', 'not counted')}"
            )
        finally:
            control.close(linger=0)
            flooder.close(linger=0)
            context.term()


def main() -> None:
    # Per-request info lines would be most of what is measured; warnings still show.
    configure_logging(LogSettings(level="warn", format="console"), "keyd-ops-bench")
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.keyd_ops_bench", description=__doc__
    )
    parser.add_argument(
        "--keyd",
        type=Path,
        default=Path(sys.executable).with_name("danube-keyd"),
        help="keyd binary",
    )
    parser.add_argument("--requests", type=int, default=300, help="flood requests")
    parser.add_argument("--calls", type=int, default=20_000, help="job_secrets calls per mode")
    parser.add_argument("--skip-audit", action="store_true", help="only the flood")
    args = parser.parse_args()
    if not args.skip_audit:
        audit_overhead(args.calls)
    flood(args.keyd, args.requests)


if __name__ == "__main__":
    main()
