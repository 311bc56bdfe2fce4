"""The audit chain: each kind of tampering is named at its first bad line, rotation
keeps the chain, a restart continues it, and a line that cannot be written is refused
(fail closed)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from danube_keyd.audit import (
    AUDIT_FIELDS,
    AuditLog,
    AuditOpenRefused,
    head_path,
    line_mac,
    load_or_create_audit_key,
    rotated_path,
    verify,
)
from danube_shared.errors import KeyFileError
from tests.support.isolation import program_environment
from tests.support.keyd import KeydHome

AUDIT_KEY = bytes(range(32))


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "log" / "keyd-audit.log"


@pytest.fixture
def audit_log(audit_path: Path) -> Iterator[AuditLog]:
    log = AuditLog.open(audit_path, AUDIT_KEY)
    try:
        yield log
    finally:
        log.close()


def _append(log: AuditLog, n: int, *, job: str = "job-1") -> None:
    for i in range(n):
        log.append(
            "job_secrets",
            uid=1000,
            pid=4000 + i,
            job_id=job,
            names=["DEPLOY_TOKEN", f"N{i}"],
            key_ids=[bytes.fromhex("0a0b0c0d")],
            result="ok",
        )


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_a_line_holds_exactly_the_design_fields_and_a_chained_mac(
    audit_log: AuditLog, audit_path: Path
) -> None:
    """Each line is canonical JSON of the DESIGN 14 fields plus `mac`, the first one
    chained from 32 zero bytes, the second from the first's mac."""
    _append(audit_log, 2)
    first, second = (json.loads(line) for line in _lines(audit_path))
    assert sorted(first) == sorted([*AUDIT_FIELDS, "mac"])
    assert first["names"] == ["DEPLOY_TOKEN", "N0"]
    assert first["key_ids"] == ["0a0b0c0d"]
    mac = first.pop("mac")
    assert mac == line_mac(AUDIT_KEY, bytes(32), first).hex()
    assert second.pop("mac") == line_mac(AUDIT_KEY, bytes.fromhex(mac), second).hex()
    assert (
        _lines(audit_path)[0]
        == json.dumps({**first, "mac": mac}, sort_keys=True, separators=(",", ":")).encode()
    )
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600


def test_an_untouched_chain_verifies(audit_log: AuditLog, audit_path: Path) -> None:
    """Five appended lines: intact, five records."""
    _append(audit_log, 5)
    assert verify(audit_path, AUDIT_KEY) == (5, True, None, None)
    assert audit_log.verify() == (5, True, None, None)


def test_an_empty_log_verifies(audit_log: AuditLog, audit_path: Path) -> None:
    """A log opened and never written to is intact with no records."""
    assert verify(audit_path, AUDIT_KEY).intact


def test_an_edited_line_is_named(audit_log: AuditLog, audit_path: Path) -> None:
    """A changed field in line 3 breaks the chain at line 3."""
    _append(audit_log, 5)
    lines = _lines(audit_path)
    lines[2] = lines[2].replace(b'"result":"ok"', b'"result":"no"')
    _rewrite(audit_path, lines)
    verdict = verify(audit_path, AUDIT_KEY)
    assert (verdict.intact, verdict.first_bad_line) == (False, 3)


def test_an_inserted_line_is_named(audit_log: AuditLog, audit_path: Path) -> None:
    """A copy of line 2 inserted after it is caught at line 3."""
    _append(audit_log, 5)
    lines = _lines(audit_path)
    _rewrite(audit_path, [*lines[:2], lines[1], *lines[2:]])
    verdict = verify(audit_path, AUDIT_KEY)
    assert (verdict.intact, verdict.first_bad_line) == (False, 3)


def test_a_forged_line_under_another_key_is_named(audit_log: AuditLog, audit_path: Path) -> None:
    """A well-formed line chained under a key that is not the audit key is caught."""
    _append(audit_log, 3)
    lines = _lines(audit_path)
    record = json.loads(lines[1])
    record.pop("mac")
    previous = bytes.fromhex(json.loads(lines[0])["mac"])
    record["mac"] = line_mac(bytes(32), previous, record).hex()
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    _rewrite(audit_path, lines)
    assert verify(audit_path, AUDIT_KEY).first_bad_line == 2


def test_a_removed_line_is_named(audit_log: AuditLog, audit_path: Path) -> None:
    """Line 3 removed: the line now third (the old fourth) does not chain."""
    _append(audit_log, 5)
    lines = _lines(audit_path)
    _rewrite(audit_path, [*lines[:2], *lines[3:]])
    verdict = verify(audit_path, AUDIT_KEY)
    assert (verdict.intact, verdict.first_bad_line) == (False, 3)


def test_reordered_lines_are_named(audit_log: AuditLog, audit_path: Path) -> None:
    """Lines 2 and 3 swapped: caught at line 2."""
    _append(audit_log, 5)
    lines = _lines(audit_path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(audit_path, lines)
    verdict = verify(audit_path, AUDIT_KEY)
    assert (verdict.intact, verdict.first_bad_line) == (False, 2)


def test_a_truncated_tail_is_caught_by_the_head(audit_log: AuditLog, audit_path: Path) -> None:
    """The last two of five lines removed: every remaining line chains, but the head
    counts five, so the first missing line (4) is named."""
    _append(audit_log, 5)
    _rewrite(audit_path, _lines(audit_path)[:3])
    verdict = verify(audit_path, AUDIT_KEY)
    assert (verdict.records, verdict.intact, verdict.first_bad_line) == (3, False, 4)


def test_an_edited_head_is_caught(audit_log: AuditLog, audit_path: Path) -> None:
    """A head rewritten to match a truncated file fails its own seal."""
    _append(audit_log, 5)
    _rewrite(audit_path, _lines(audit_path)[:3])
    head = json.loads(head_path(audit_path).read_bytes())
    head["lines"] = 3
    head["mac"] = json.loads(_lines(audit_path)[2])["mac"]
    head_path(audit_path).write_text(json.dumps(head))
    verdict = verify(audit_path, AUDIT_KEY)
    assert not verdict.intact
    assert "edited" in (verdict.problem or "")


def test_a_removed_head_is_caught(audit_log: AuditLog, audit_path: Path) -> None:
    """Lines without a head cannot be checked for a cut tail: not intact."""
    _append(audit_log, 2)
    head_path(audit_path).unlink()
    assert not verify(audit_path, AUDIT_KEY).intact


def test_a_line_written_before_a_crash_left_the_head_behind_verifies(
    audit_log: AuditLog, audit_path: Path
) -> None:
    """keyd killed between a line and its head: the extra line chains, so it is kept as
    genuine (only the audit key makes a valid line)."""
    _append(audit_log, 3)
    stale_head = head_path(audit_path).read_bytes()
    _append(audit_log, 1)
    head_path(audit_path).write_bytes(stale_head)
    assert verify(audit_path, AUDIT_KEY) == (4, True, None, None)


def test_a_restart_continues_the_chain(audit_path: Path) -> None:
    """Lines from two runs of keyd form one intact chain."""
    for _ in range(2):
        log = AuditLog.open(audit_path, AUDIT_KEY)
        _append(log, 3)
        log.close()
    assert verify(audit_path, AUDIT_KEY) == (6, True, None, None)


def test_a_restart_after_a_cut_tail_keeps_the_break_visible(audit_path: Path) -> None:
    """A tail cut while keyd was down is reported at start, and the next line still
    breaks the chain where the lines went missing."""
    log = AuditLog.open(audit_path, AUDIT_KEY)
    _append(log, 5)
    log.close()
    _rewrite(audit_path, _lines(audit_path)[:3])
    log = AuditLog.open(audit_path, AUDIT_KEY)
    assert log.startup_problem is not None
    _append(log, 1)
    log.close()
    verdict = verify(audit_path, AUDIT_KEY)
    assert (verdict.intact, verdict.first_bad_line) == (False, 4)


def test_rotation_keeps_the_chain_across_files(audit_path: Path) -> None:
    """With a small size limit the log rotates through `.1`..`.3`, dropping the oldest;
    the kept files verify as one chain, each new file's first line chained from the last
    line of the one before."""
    log = AuditLog.open(audit_path, AUDIT_KEY, max_bytes=1000, keep=3)
    _append(log, 30)
    log.close()
    assert rotated_path(audit_path, 3).exists()
    assert not rotated_path(audit_path, 4).exists()
    kept = sum(
        len(_lines(p)) for p in [audit_path, *(rotated_path(audit_path, g) for g in (1, 2, 3))]
    )
    assert 0 < kept < 30
    assert all(p.stat().st_size <= 1000 for p in audit_path.parent.glob("keyd-audit.log*"))
    assert verify(audit_path, AUDIT_KEY) == (kept, True, None, None)
    first = json.loads(_lines(audit_path)[0])
    mac = bytes.fromhex(first.pop("mac"))
    last_of_old = bytes.fromhex(json.loads(_lines(rotated_path(audit_path, 1))[-1])["mac"])
    assert line_mac(AUDIT_KEY, last_of_old, first) == mac


def test_a_line_removed_from_a_rotated_file_is_named(audit_path: Path) -> None:
    """The last line of `.1` removed: the current file's first line no longer chains."""
    log = AuditLog.open(audit_path, AUDIT_KEY, max_bytes=1000, keep=3)
    _append(log, 12)
    log.close()
    older = rotated_path(audit_path, 1)
    before = sum(
        len(_lines(rotated_path(audit_path, g)))
        for g in (2, 3)
        if rotated_path(audit_path, g).exists()
    )
    _rewrite(older, _lines(older)[:-1])
    verdict = verify(audit_path, AUDIT_KEY)
    assert (verdict.intact, verdict.first_bad_line) == (False, before + len(_lines(older)) + 1)


def test_a_dropped_oldest_file_is_caught(audit_path: Path) -> None:
    """Deleting the oldest kept file breaks the chain at the next file's first line."""
    log = AuditLog.open(audit_path, AUDIT_KEY, max_bytes=1000, keep=3)
    _append(log, 30)
    log.close()
    rotated_path(audit_path, 3).unlink()
    verdict = verify(audit_path, AUDIT_KEY)
    assert (verdict.intact, verdict.first_bad_line) == (False, 1)


_FULL_DISK_PROBE = """
import json, resource, signal, sys
from pathlib import Path
from danube_keyd.audit import AuditLog, AuditUnavailable

path = Path(sys.argv[1])
log = AuditLog.open(path, bytes(range(32)))
for _ in range(3):
    log.append("job_secrets", uid=1, pid=2, job_id="j", names=["A"], key_ids=[], result="ok")
# The file may not grow past its size now, for root too (a full disk, in effect).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 20, resource.RLIM_INFINITY))
try:
    log.append("job_secrets", uid=1, pid=2, job_id="j", names=["A"], key_ids=[], result="ok")
except AuditUnavailable as exc:
    print(json.dumps({"refused": exc.message, "code": exc.code, "reason": exc.reason}))
else:
    print(json.dumps({"refused": None}))
"""


def test_a_line_that_cannot_be_written_is_refused_and_leaves_no_partial_line(
    audit_path: Path,
) -> None:
    """When the file cannot grow (RLIMIT_FSIZE in a child process: a real EFBIG/short
    write that root gets too), `append` raises `AuditUnavailable` ("audit log
    unavailable", wire code `internal`), and the partial line is cut off so the chain
    still verifies."""
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_PROBE, str(audit_path)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=30,
        check=True,
    )
    outcome = json.loads(result.stdout)
    assert outcome["refused"] == "audit log unavailable"
    assert outcome["code"] == "internal"
    assert verify(audit_path, AUDIT_KEY) == (3, True, None, None)


def test_an_audit_path_under_a_file_is_refused_at_open(tmp_path: Path) -> None:
    """An audit path whose directory is a regular file cannot be opened: a typed
    refusal naming the path (keyd exits 2 on it)."""
    (tmp_path / "plain").write_bytes(b"")
    path = tmp_path / "plain" / "audit.log"
    with pytest.raises(AuditOpenRefused, match=f"keyd.audit_path {path} cannot be opened"):
        AuditLog.open(path, AUDIT_KEY)


def test_an_audit_path_in_proc_is_refused_at_open() -> None:
    """A place nobody, root included, can create a file in is refused at open."""
    with pytest.raises(AuditOpenRefused, match="cannot be opened for appending"):
        AuditLog.open(Path("/proc/danube-audit-test.log"), AUDIT_KEY)


def test_an_audit_path_that_is_a_fifo_is_refused_at_open(tmp_path: Path) -> None:
    """A FIFO at the audit path is refused without blocking."""
    os.mkfifo(tmp_path / "audit.log")
    with pytest.raises(AuditOpenRefused):
        AuditLog.open(tmp_path / "audit.log", AUDIT_KEY)


def test_the_audit_key_is_created_once_under_the_key_file_rules(keyd_home: KeydHome) -> None:
    """`audit.key` is made beside the encryption key (32 bytes, 0600) when absent and
    read back unchanged afterwards."""
    first = load_or_create_audit_key(keyd_home.key_path)
    path = keyd_home.key_path.parent / "audit.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 32
    assert load_or_create_audit_key(keyd_home.key_path) == first == path.read_bytes()


def test_an_audit_key_others_can_read_is_refused(keyd_home: KeydHome) -> None:
    """An existing `audit.key` is under the same file rules as the encryption key."""
    load_or_create_audit_key(keyd_home.key_path)
    (keyd_home.key_path.parent / "audit.key").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_audit_key(keyd_home.key_path)
