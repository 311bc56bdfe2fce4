"""The `danube-keyd` process with its keyring, audit log and memory bounds: SIGHUP and
keys_reload, the peer's uid and pid in the audit, the audit failing closed, the
encryption limit from a seeded count file, and a peer that never reads its replies."""

# ruff: noqa: S105 -- job tokens here are test data, not credentials

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from danube_keyd.encryption_counter import count_file_path
from danube_keyd.keyring import rotate
from danube_shared.keyd_protocol import endpoint, key_id_for
from tests.support.isolation import program_environment
from tests.support.keyd import KEYD, KeydHome, KeydProcess, RawPeer, encrypt
from tests.support.keyd import load as load_secrets

TOKEN = "tok-process"
# The hang guard of every wait below: far above what any of them takes.
HANG_GUARD_S = 60.0


def load(control: RawPeer, job_id: str, secrets: dict[str, tuple[bytes, str]]) -> dict[str, Any]:
    return load_secrets(control, job_id, secrets, token=TOKEN)


def audit_lines(home: KeydHome) -> list[dict[str, Any]]:
    return [json.loads(line) for line in home.audit_path.read_text().splitlines()]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_sighup_reloads_the_keyring_and_keeps_running_jobs(keyd: KeydProcess) -> None:
    """After a rotation on disk, SIGHUP makes the new key active; a job loaded before is
    still served, and a ciphertext under the old key still loads."""
    home = keyd.home
    with RawPeer(home.control_path) as control, RawPeer(home.worker_path) as worker:
        old_ciphertext = encrypt(control, b"before", "secret:1")
        assert load(control, "job-1", {"A": (old_ciphertext, "secret:1")})["ok"]
        old_id, new_id = rotate(home.key_path)
        os.kill(keyd.pid, signal.SIGHUP)
        deadline = time.monotonic() + HANG_GUARD_S
        while (ping := control.ask({"v": 1, "id": 3, "op": "ping"})) and ping["key_id"] != new_id:
            assert time.monotonic() < deadline, "SIGHUP did not reload the keyring"
            time.sleep(0.05)
        assert old_ciphertext[1:5] == old_id
        assert encrypt(control, b"after", "secret:2")[1:5] == new_id
        served = worker.ask(
            {"v": 1, "id": 4, "op": "job_secrets", "job_id": "job-1", "token": TOKEN}
        )
        assert served is not None
        assert served["secrets"] == {"A": b"before"}
        assert load(control, "job-2", {"A": (old_ciphertext, "secret:1")})["ok"]
    reloads = [line for line in audit_lines(home) if line["op"] == "keys_reload"]
    assert [(line["result"], line["key_ids"]) for line in reloads] == [
        ("ok", [new_id.hex(), old_id.hex()])
    ]


def test_the_audit_records_the_peers_uid_and_pid(keyd: KeydProcess) -> None:
    """Each audit line carries the uid and pid of the process on the other end of the
    socket (from the kernel, through ZAP), and never a value."""
    home = keyd.home
    with RawPeer(home.control_path) as control, RawPeer(home.worker_path) as worker:
        ciphertext = encrypt(control, b"VALUE-canary", "secret:1")
        load(control, "job-1", {"A": (ciphertext, "secret:1")})
        worker.ask({"v": 1, "id": 5, "op": "job_secrets", "job_id": "job-1", "token": TOKEN})
        worker.ask({"v": 1, "id": 6, "op": "job_secrets", "job_id": "job-1", "token": "no"})
    lines = audit_lines(home)
    assert [(line["op"], line["result"]) for line in lines] == [
        ("job_load", "ok"),
        ("job_secrets", "ok"),
        ("job_secrets", "unauthorized"),
    ]
    assert {(line["uid"], line["pid"]) for line in lines} == {(os.geteuid(), os.getpid())}
    assert b"VALUE-canary" not in home.audit_path.read_bytes()


def test_an_audit_path_keyd_cannot_open_exits_2(keyd_home: KeydHome) -> None:
    """An audit path under a regular file (no directory can be made there): exit 2,
    naming keyd.audit_path."""
    blocker = keyd_home.root / "not-a-dir"
    blocker.write_text("")
    keyd_home.write_config(audit_path=str(blocker / "keyd-audit.log"))
    done = subprocess.run(
        [str(KEYD), "--config", str(keyd_home.config_path)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert done.returncode == 2
    assert "keyd.audit_path" in done.stderr + done.stdout


def test_the_audit_key_is_created_beside_the_encryption_key(keyd: KeydProcess) -> None:
    """keyd makes <key dir>/audit.key, 32 bytes, 0600, when absent."""
    audit_key = keyd.home.key_path.parent / "audit.key"
    info = audit_key.stat()
    assert (info.st_size, info.st_mode & 0o777) == (32, 0o600)


@pytest.fixture
def limited_keyd(keyd_home: KeydHome) -> Iterator[subprocess.Popen[bytes]]:
    """keyd whose files may not grow past 8 KiB (RLIMIT_FSIZE binds root too; Python
    ignores SIGXFSZ, so a write past it fails with EFBIG). Its log goes to /dev/null,
    which the limit does not bind, so only the audit file (and the count file) hit it."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    process = subprocess.Popen(
        [str(KEYD), "--config", str(keyd_home.config_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=program_environment(),
        preexec_fn=limit_file_size,  # noqa: PLW1509 -- only setrlimit, before exec
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=HANG_GUARD_S)


def test_keyd_fails_closed_when_the_audit_file_cannot_grow(
    keyd_home: KeydHome, limited_keyd: subprocess.Popen[bytes]
) -> None:
    """Once the audit file cannot take another line, job_secrets is refused (internal,
    "audit log unavailable") with no secret in the reply, every time, and keyd keeps
    serving other ops."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not keyd_home.worker_path.exists():
        assert limited_keyd.poll() is None, "keyd exited"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with RawPeer(keyd_home.control_path) as control, RawPeer(keyd_home.worker_path) as worker:
        ciphertext = encrypt(control, b"SECRET-canary", "secret:1")
        assert load(control, "job-1", {"A": (ciphertext, "secret:1")})["ok"]
        replies: list[dict[str, Any]] = []
        for request_id in range(60):  # ~300-byte lines: 8 KiB is full well before 60
            reply = worker.ask(
                {"v": 1, "id": request_id, "op": "job_secrets", "job_id": "job-1", "token": TOKEN}
            )
            assert reply is not None
            replies.append(reply)
        first_refusal = next(i for i, reply in enumerate(replies) if not reply["ok"])
        assert first_refusal > 0
        for reply in replies[first_refusal:]:
            assert (reply["error"], reply["message"]) == ("internal", "audit log unavailable")
            assert "secrets" not in reply
        ping = control.ask({"v": 1, "id": 99, "op": "ping"})
        assert ping is not None
        assert ping["ok"]
    lines = audit_lines(keyd_home)
    assert len(lines) == first_refusal + 1  # job_load, then one per answered job_secrets


def test_a_seeded_count_near_the_limit_gives_key_exhausted(
    keyd_home: KeydHome, start_keyd: Callable[..., KeydProcess]
) -> None:
    """A count file at 2**32 - 1 (as a key nearly worn out would have): one encryption
    passes, the next is key_exhausted ("rotate the key"), job_load still works, and
    stats shows the count against the limit."""
    key_id = key_id_for(keyd_home.key_path.read_bytes())
    count_file = count_file_path(keyd_home.key_path, key_id)
    count_file.write_text(f"{2**32 - 1}\n")
    count_file.chmod(0o600)
    keyd = start_keyd(keyd_home)
    with RawPeer(keyd.home.control_path) as control:
        ciphertext = encrypt(control, b"last", "secret:1")
        refused = control.ask(
            {"v": 1, "id": 7, "op": "encrypt", "items": [{"plaintext": b"x", "context": "c"}]}
        )
        assert refused is not None
        assert refused["error"] == "key_exhausted"
        assert "rotate the key" in refused["message"]
        assert load(control, "job-1", {"A": (ciphertext, "secret:1")})["ok"]
        stats = control.ask({"v": 1, "id": 8, "op": "stats"})
    assert stats is not None
    assert (stats["encryptions"][key_id.hex()], stats["encryption_limit"]) == (2**32, 2**32)


# The memory bound, as the security review measured it.

FLOOD_SECRETS = 16
FLOOD_SECRET_BYTES = 64 * 1024  # each reply is about 1 MiB
FLOOD_REQUESTS = 300  # about 300 MiB of replies if keyd kept them all
RSS_BOUND_KIB = 64 * 1024


@contextlib.contextmanager
def never_reading_peer(path: Path) -> Iterator[zmq.Socket[bytes]]:
    """A DEALER that sends and never reads: its own queue holds one reply, so the rest
    back up into keyd."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.SNDHWM, FLOOD_REQUESTS + 10)
    sock.connect(endpoint(path))
    try:
        yield sock
    finally:
        sock.close(linger=0)
        context.term()


def test_a_peer_that_never_reads_its_replies_cannot_grow_keyd(keyd: KeydProcess) -> None:
    """300 job_secrets of ~1 MiB replies from a peer that never reads: keyd serves them
    all (stats counts them), drops what the peer does not take, and its RSS grows by
    less than 64 MiB."""
    home = keyd.home
    with RawPeer(home.control_path) as control:
        secrets = {
            f"S{i}": (
                encrypt(control, os.urandom(FLOOD_SECRET_BYTES), f"secret:{i}"),
                f"secret:{i}",
            )
            for i in range(FLOOD_SECRETS)
        }
        assert load(control, "flood", secrets)["ok"]
        # One honest fetch first, so that the reply buffers of a served request are
        # part of the baseline.
        with RawPeer(home.worker_path) as worker:
            got = worker.ask(
                {"v": 1, "id": 1, "op": "job_secrets", "job_id": "flood", "token": TOKEN}
            )
            assert got is not None
            assert len(got["secrets"]) == FLOOD_SECRETS
        before = rss_kib(keyd.pid)
        request = {"v": 1, "id": 0, "op": "job_secrets", "job_id": "flood", "token": TOKEN}
        with never_reading_peer(home.worker_path) as flood:
            for request_id in range(FLOOD_REQUESTS):
                flood.send_multipart([b"", msgspec.msgpack.encode({**request, "id": request_id})])
            deadline = time.monotonic() + HANG_GUARD_S
            while True:
                stats = control.ask({"v": 1, "id": 2, "op": "stats"})
                assert stats is not None
                if stats["requests"].get("job_secrets", 0) >= FLOOD_REQUESTS + 1:
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.1)
            after = rss_kib(keyd.pid)
    assert stats["dropped_replies"] > 0
    assert after - before < RSS_BOUND_KIB, (before, after)
    assert '"reply dropped"' in home.log_text()
