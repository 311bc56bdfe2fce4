"""The audit writer's bytes are exactly DESIGN 14's canonical JSON: whatever text a
record holds, each line is what `json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` makes of it, its `mac` is the one computed over that reference
form, and the head is sealed over the reference form too. So lines written before the
writer's faster encoder, and after it, verify alike."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danube_keyd.audit import (
    AuditLog,
    AuditUnavailable,
    canonical_json,
    head_path,
    line_mac,
    verify,
)

AUDIT_KEY = bytes(range(32))

# Any text a request can carry: every code point but lone surrogates (which have no
# UTF-8 form and are refused, see below), control characters and quotes included.
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_IDS = st.none() | st.integers(min_value=0, max_value=2**63 - 1)


def _reference(value: Any) -> bytes:
    """DESIGN 14's canonical JSON, spelled out with the standard library."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _reference_head(audit_key: bytes, lines: int, mac: str, base: str) -> bytes:
    body = {"base": base, "lines": lines, "mac": mac}
    seal = hmac.new(audit_key, b"danube-audit-head\x00" + _reference(body), hashlib.sha256)
    return _reference({**body, "head_mac": seal.hexdigest()}).ljust(319) + b"\n"


@settings(max_examples=150, deadline=None)
@given(
    op=_TEXT,
    uid=_IDS,
    pid=_IDS,
    job_id=st.none() | _TEXT,
    names=st.lists(_TEXT, max_size=8),
    key_ids=st.lists(st.binary(min_size=4, max_size=4), max_size=3),
    result=_TEXT,
)
def test_lines_and_head_are_the_reference_canonical_json(
    *,
    op: str,
    uid: int | None,
    pid: int | None,
    job_id: str | None,
    names: list[str],
    key_ids: list[bytes],
    result: str,
) -> None:
    """For any field values, two appended lines are byte for byte the reference
    encoding of their records plus `mac`, chain under the reference `line_mac`, and the
    head is the reference encoding of its record; the chain verifies."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = Path(directory) / "audit.log"
        log = AuditLog.open(path, AUDIT_KEY)
        try:
            for _ in range(2):
                log.append(
                    op,
                    uid=uid,
                    pid=pid,
                    job_id=job_id,
                    names=names,
                    key_ids=key_ids,
                    result=result,
                )
        finally:
            log.close()
        previous = bytes(32)
        for line in path.read_bytes().splitlines():
            record = json.loads(line)
            assert line == _reference(record)
            mac = record.pop("mac")
            assert record["names"] == names
            assert record["job_id"] == job_id
            assert record["op"] == op
            assert mac == line_mac(AUDIT_KEY, previous, record).hex()
            previous = bytes.fromhex(mac)
        assert head_path(path).read_bytes() == _reference_head(
            AUDIT_KEY, 2, previous.hex(), bytes(32).hex()
        )
        assert verify(path, AUDIT_KEY).intact


@pytest.mark.parametrize(
    "text",
    ["plain", 'quote " and \\ backslash', "\x00\x01\x1f\x7f", "\u2028\u2029", "é 漢字 🔑", "</"],
)
def test_the_reference_and_the_writer_agree_on_tricky_text(tmp_path: Path, text: str) -> None:
    """Control characters, quotes, backslashes, line separators and non-ASCII text are
    written exactly as the reference encodes them (non-ASCII unescaped)."""
    path = tmp_path / "audit.log"
    log = AuditLog.open(path, AUDIT_KEY)
    try:
        log.append("job_secrets", uid=1, pid=2, job_id=text, names=[text], key_ids=(), result="ok")
    finally:
        log.close()
    line = path.read_bytes().rstrip(b"\n")
    assert line == canonical_json(json.loads(line))
    assert json.loads(line)["job_id"] == text


def test_non_ascii_text_is_written_as_utf8_not_escaped(tmp_path: Path) -> None:
    """DESIGN 14's canonical JSON is UTF-8: a name like "clé" is its UTF-8 bytes in the
    line, not a \\u escape."""
    path = tmp_path / "audit.log"
    log = AuditLog.open(path, AUDIT_KEY)
    try:
        log.append("job_secrets", uid=1, pid=2, job_id="j", names=["clé"], key_ids=(), result="ok")
    finally:
        log.close()
    assert '"names":["clé"]'.encode() in path.read_bytes()


def test_a_field_with_a_lone_surrogate_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """Text with no UTF-8 form cannot be recorded: the append is refused (so is the
    request) and the file and head are untouched."""
    path = tmp_path / "audit.log"
    log = AuditLog.open(path, AUDIT_KEY)
    try:
        with pytest.raises(AuditUnavailable):
            log.append(
                "job_secrets", uid=1, pid=2, job_id="job-\ud800", names=[], key_ids=(), result="ok"
            )
        with pytest.raises(AuditUnavailable):
            log.append(
                "job_secrets", uid=1, pid=2, job_id="job", names=["\udfff"], key_ids=(), result="ok"
            )
    finally:
        log.close()
    assert path.read_bytes() == b""
    assert head_path(path).read_bytes() == b""


def test_time_is_iso_8601_utc_to_the_microsecond_with_a_z(tmp_path: Path) -> None:
    """`time` is written as `datetime.isoformat(timespec="microseconds")` writes UTC,
    with `Z` for the offset, and is the time of the append."""
    path = tmp_path / "audit.log"
    log = AuditLog.open(path, AUDIT_KEY)
    try:
        before = datetime.now(UTC)
        for _ in range(3):
            log.append("job_secrets", uid=1, pid=2, job_id="j", names=[], key_ids=(), result="ok")
        after = datetime.now(UTC)
    finally:
        log.close()
    for line in path.read_bytes().splitlines():
        written = json.loads(line)["time"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", written)
        instant = datetime.fromisoformat(written.replace("Z", "+00:00"))
        assert before <= instant <= after
        assert instant.isoformat(timespec="microseconds").replace("+00:00", "Z") == written
