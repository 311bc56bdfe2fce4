"""The audit head written after the reply (`defer_head`): the line is on disk before
`append` returns and before keyd replies, the head follows in `write_head` (keyd runs it
once the reply is sent), a head is never two lines behind, and a keyd killed at any
point leaves a chain that verifies."""

# ruff: noqa: S105 -- job tokens here are test data, not credentials

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from danube_keyd.audit import AuditLog, head_path, verify
from tests.support.keyd import KeydProcess, RawPeer, encrypt, load

AUDIT_KEY = bytes(range(32))
TOKEN = "tok-head"


def _append(log: AuditLog, job: str = "job-1") -> None:
    log.append("job_secrets", uid=1000, pid=4000, job_id=job, names=["A"], key_ids=(), result="ok")


def _line_count(audit_path: Path) -> int:
    return len(audit_path.read_bytes().splitlines())


def _head_lines(audit_path: Path) -> int:
    return int(json.loads(head_path(audit_path).read_bytes())["lines"])


def test_a_deferred_head_follows_write_head(tmp_path: Path) -> None:
    """With `defer_head` the line is written by `append` and its head only by
    `write_head`; in between the chain verifies (a line beyond the head chains)."""
    audit_path = tmp_path / "log" / "audit.log"
    log = AuditLog.open(audit_path, AUDIT_KEY, defer_head=True)
    try:
        _append(log)
        log.write_head()
        _append(log)
        assert _line_count(audit_path) == 2
        assert _head_lines(audit_path) == 1
        assert verify(audit_path, AUDIT_KEY) == (2, True, None, None)
        log.write_head()
        assert _head_lines(audit_path) == 2
    finally:
        log.close()


def test_a_pending_head_is_written_before_the_next_line(tmp_path: Path) -> None:
    """Without `write_head` between them, each `append` first writes the head its
    predecessor left pending: the head is never more than one line behind."""
    audit_path = tmp_path / "log" / "audit.log"
    log = AuditLog.open(audit_path, AUDIT_KEY, defer_head=True)
    try:
        for count in range(1, 5):
            _append(log)
            assert _line_count(audit_path) == count
            if count > 1:
                assert _head_lines(audit_path) == count - 1
    finally:
        log.close()
    assert _head_lines(audit_path) == 4  # close() writes the pending one
    assert verify(audit_path, AUDIT_KEY) == (4, True, None, None)


def test_a_reopened_log_continues_a_chain_whose_head_was_left_behind(tmp_path: Path) -> None:
    """A process gone between a line and its head (the log never closed): the next open
    takes the extra line as genuine and chains on from it."""
    audit_path = tmp_path / "log" / "audit.log"
    first = AuditLog.open(audit_path, AUDIT_KEY, defer_head=True)
    _append(first)
    first.write_head()
    _append(first)  # its head is never written: `first` is abandoned, not closed
    second = AuditLog.open(audit_path, AUDIT_KEY, defer_head=True)
    try:
        assert second.startup_problem is None
        _append(second)
    finally:
        second.close()
    assert verify(audit_path, AUDIT_KEY) == (3, True, None, None)
    assert _head_lines(audit_path) == 3


def _load_job(control: RawPeer, job_id: str) -> None:
    ciphertext = encrypt(control, b"s3cr3t", "s:a")
    loaded = load(control, job_id, {"A": (ciphertext, "s:a")}, token=TOKEN, ttl_s=60)
    assert loaded["ok"], loaded


def _fetch(worker: RawPeer, job_id: str) -> dict[str, Any]:
    reply = worker.ask({"v": 1, "id": 3, "op": "job_secrets", "job_id": job_id, "token": TOKEN})
    assert reply is not None
    assert reply["ok"], reply
    return reply


def test_keyd_writes_the_head_after_each_reply(keyd: KeydProcess) -> None:
    """Once keyd has answered a later request, the head counts every audit line (keyd
    writes it after each reply, before it reads the next request)."""
    with RawPeer(keyd.home.control_path) as control, RawPeer(keyd.home.worker_path) as worker:
        _load_job(control, "job-h")
        _fetch(worker, "job-h")
        assert worker.ask({"v": 1, "id": 4, "op": "ping"}) is not None
        audit_path = keyd.home.audit_path
        assert _line_count(audit_path) == 2  # job_load, job_secrets
        assert _head_lines(audit_path) == 2
        verdict = control.ask({"v": 1, "id": 5, "op": "audit_verify"})
    assert verdict is not None
    assert (verdict["records"], verdict["intact"]) == (2, True)


def test_a_keyd_killed_right_after_a_reply_has_its_line_and_an_intact_chain(
    keyd: KeydProcess, start_keyd: Callable[..., KeydProcess]
) -> None:
    """kill -9 as soon as the secrets arrive: their audit line is already on disk (it is
    written before the reply), and the restarted keyd verifies the chain intact whether
    or not the head was written."""
    with RawPeer(keyd.home.control_path) as control, RawPeer(keyd.home.worker_path) as worker:
        _load_job(control, "job-k")
        _fetch(worker, "job-k")
        keyd.kill()
    last = json.loads(keyd.home.audit_path.read_bytes().splitlines()[-1])
    assert (last["op"], last["job_id"], last["result"]) == ("job_secrets", "job-k", "ok")
    restarted = start_keyd(keyd.home)
    with RawPeer(restarted.home.control_path) as control:
        verdict = control.ask({"v": 1, "id": 6, "op": "audit_verify"})
    assert verdict is not None
    assert (verdict["records"], verdict["intact"]) == (2, True)
    assert "audit chain damaged" not in restarted.home.log_text()
