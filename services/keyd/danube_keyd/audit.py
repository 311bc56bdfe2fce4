"""keyd's audit chain (DESIGN 14): one HMAC-chained JSON line per audited request, the
chain's head beside it, rotation by size, and the verification that names the first
broken line.

A line is the canonical JSON (sorted keys, no spaces, UTF-8) of the record's fields
(`AUDIT_FIELDS`) plus `mac`: the hex HMAC-SHA256, under the audit key, of the previous
line's `mac` bytes (32 zero bytes for the very first line) followed by the canonical
JSON of this line's record without `mac`. The audit key is `<key dir>/audit.key`, 32
random bytes under the key file rules, created by keyd if absent.

The head, `<audit_path>.head`, holds the total line count of every kept file, the last
`mac`, and `base` (the `mac` the oldest kept file's first line chains from: zero bytes
until rotation drops a file), itself under an HMAC, and is replaced atomically after
every line: a removed or truncated tail no longer reaches the head's line and `mac`.
A line beyond the head is accepted when it chains (keyd stopped between the line and
the head; only the audit key makes a valid line).

Rotation: past `max_bytes` the file becomes `<audit_path>.1` (older ones shift up to
`.<keep>`, the oldest is dropped) and the new file's first line chains from the last
line of the old one.

Durability: each line is one `write(2)` on an `O_APPEND` descriptor before `append`
returns, so it survives keyd being killed; with `sync=True` it is also `fdatasync`ed
with its head (survives a power loss, at the cost measured in benchmarks/audit_bench.py).

With `defer_head=True` (keyd's socket loop) `append` writes the line only and the head
follows in `write_head`, which keyd runs once the reply is handed to its socket: the
line still precedes the reply, and the head's encoding, seal and `pwrite` leave the
reply's path. A head is never more than one line behind: `append` writes one left
pending before its own line, and refuses that line if it cannot. Killed in between,
keyd leaves a line beyond the head, which chains and is accepted, as above.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import stat
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from danube_keyd.atomic_file import open_directory, write_new_file
from danube_keyd.keyfile import open_key_directory, read_key_at
from danube_shared.errors import DanubeError

AUDIT_FIELDS = ("time", "op", "uid", "pid", "job_id", "names", "key_ids", "result")
AUDITED_OPS = ("job_load", "job_secrets", "rewrap", "keys_reload")
AUDIT_KEY_NAME = "audit.key"
AUDIT_KEY_BYTES = 32
MAC_BYTES = 32
GENESIS_MAC = bytes(MAC_BYTES)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 5
_HEAD_LABEL = b"danube-audit-head\x00"
_HEAD_BYTES = 320  # the sealed record is about 250 bytes; one sector holds it whole
_READ_CHUNK = 1 << 20


class AuditUnavailable(DanubeError):
    """A line could not be written (or its head updated): the caller refuses the request
    and discloses nothing. The message is the wire's; `reason` is for keyd's log."""

    code = "internal"

    def __init__(self, reason: str) -> None:
        super().__init__("audit log unavailable")
        self.reason = reason


class AuditOpenRefused(DanubeError):
    """The audit path (or the audit key) cannot be used at start: keyd exits 2 with this
    message, which names the path and the fix."""

    code = "audit_refused"


class AuditVerdict(NamedTuple):
    """What `verify` found. `first_bad_line` counts from 1 across every kept file, oldest
    first; `problem` says what broke there (None when intact)."""

    records: int
    intact: bool
    first_bad_line: int | None
    problem: str | None


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes a `mac` covers. The reference form,
    which `verify` checks lines against; raises `UnicodeEncodeError` for a str with
    lone surrogates."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# The writer's encoder: the same bytes as `canonical_json` for every value a record or
# a head holds (str, int, None, lists of str; tests/keyd/test_audit_encoding.py proves
# it over arbitrary text), about eight times faster. Raises `UnicodeEncodeError` where
# `canonical_json` does.
_encode_canonical = msgspec.json.Encoder(order="sorted").encode


def line_mac(audit_key: bytes, previous_mac: bytes, record: dict[str, Any]) -> bytes:
    """The `mac` of `record` (without `mac`) chained after `previous_mac`."""
    return hmac.new(audit_key, previous_mac + canonical_json(record), hashlib.sha256).digest()


def head_path(audit_path: Path) -> Path:
    return audit_path.with_name(audit_path.name + ".head")


def rotated_path(audit_path: Path, generation: int) -> Path:
    return audit_path.with_name(f"{audit_path.name}.{generation}")


def load_or_create_audit_key(key_path: Path, *, owner_uid: int | None = None) -> bytearray:
    """The audit key beside the encryption key (`<key dir>/audit.key`), created with 32
    random bytes (0600) if absent; raises `KeyFileError` if present but refused. The
    caller zeroes the returned buffer once it has built its HMAC key."""
    uid = os.geteuid() if owner_uid is None else owner_uid
    path = key_path.parent / AUDIT_KEY_NAME
    dir_fd = open_key_directory(key_path.parent, owner_uid=uid)
    try:
        try:
            os.stat(AUDIT_KEY_NAME, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            fresh = bytearray(os.urandom(AUDIT_KEY_BYTES))
            try:
                write_new_file(dir_fd, AUDIT_KEY_NAME, fresh, replace=False)
            except FileExistsError:
                pass  # made meanwhile by another process: read that one
            finally:
                fresh[:] = bytes(AUDIT_KEY_BYTES)
        return read_key_at(dir_fd, path, owner_uid=uid)
    finally:
        os.close(dir_fd)


class _Head(NamedTuple):
    # A tuple, not a frozen dataclass: one is made per line, and a frozen dataclass's
    # __init__ sets each field through object.__setattr__.
    lines: int
    mac: bytes
    base: bytes

    def encode(self, sealer: hmac.HMAC) -> bytes:
        """The head's record, sealed by `sealer`: `_head_sealer(audit key)`."""
        body = {"base": self.base.hex(), "lines": self.lines, "mac": self.mac.hex()}
        seal = sealer.copy()
        seal.update(_encode_canonical(body))
        body["head_mac"] = seal.hexdigest()
        # Always the same length, so each update is one pwrite over the whole record.
        return _encode_canonical(body).ljust(_HEAD_BYTES - 1) + b"\n"


def _head_sealer(audit_key: bytes) -> hmac.HMAC:
    """The HMAC a head's body is sealed with, label included, to `copy()` per head."""
    return hmac.new(audit_key, _HEAD_LABEL, hashlib.sha256)


class _HeadProblem(Exception):
    pass


def _read_head(path: Path, audit_key: bytes) -> _Head | None:
    """The head, None if there is none; raises `_HeadProblem` if it is not a valid one."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _HeadProblem(f"head {path} cannot be read: {exc.strerror}") from None
    if not raw:
        return None  # created at open, before keyd's first line
    try:
        fields = json.loads(raw)
        head = _Head(
            lines=int(fields["lines"]),
            mac=bytes.fromhex(fields["mac"]),
            base=bytes.fromhex(fields["base"]),
        )
        sealed = hmac.compare_digest(head.encode(_head_sealer(audit_key)), raw)
    except (ValueError, KeyError, TypeError):
        sealed = False
        head = None
    if head is None or not sealed or head.lines < 0:
        raise _HeadProblem(f"head {path} was edited or is damaged")
    return head


def _kept_files(audit_path: Path) -> list[Path]:
    """Every existing file of the chain, oldest first (the current file last)."""
    older: list[Path] = []
    generation = 1
    while rotated_path(audit_path, generation).exists():
        older.append(rotated_path(audit_path, generation))
        generation += 1
    return [*reversed(older), audit_path]


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of `path` (without newlines); nothing if it does not exist."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        yield from (line.rstrip(b"\n") for line in handle)


def _count_lines(path: Path) -> int:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return 0
    count = 0
    with handle:
        while chunk := handle.read(_READ_CHUNK):
            count += chunk.count(b"\n")
    return count


def _mac_of(line: bytes) -> bytes | None:
    try:
        value = json.loads(line)["mac"]
        return bytes.fromhex(value) if isinstance(value, str) else None
    except (ValueError, KeyError, TypeError):
        return None


def _last_mac(path: Path) -> bytes | None:
    last: bytes | None = None
    for line in _lines(path):
        last = line
    return None if last is None else _mac_of(last)


def verify(audit_path: Path, audit_key: bytes) -> AuditVerdict:
    """Check the whole chain, every kept file oldest first, against the head: names the
    first line edited, inserted, removed or reordered, or where the tail was cut."""
    try:
        head = _read_head(head_path(audit_path), audit_key)
    except _HeadProblem as exc:
        return _broken(0, None, str(exc))
    previous = GENESIS_MAC if head is None else head.base
    number = 0
    head_line_mac: bytes | None = None
    for path in _kept_files(audit_path):
        for line in _lines(path):
            number += 1
            checked = _check_line(line, previous, audit_key)
            if isinstance(checked, str):
                return _broken(number - 1, number, f"{path}: {checked}")
            previous = checked
            if head is not None and number == head.lines:
                head_line_mac = checked
    return _check_tail(audit_path, head, number, head_line_mac)


def _check_tail(
    audit_path: Path, head: _Head | None, lines: int, head_line_mac: bytes | None
) -> AuditVerdict:
    """Whether every line the head counts is still there, the head's last among them."""
    if head is None:
        if lines:
            return _broken(lines, None, f"head {head_path(audit_path)} is missing")
    elif lines < head.lines:
        return _broken(
            lines, lines + 1, f"the head counts {head.lines} lines, the files hold {lines}"
        )
    elif head.lines and head_line_mac != head.mac:
        return _broken(lines, head.lines, "the line the head names has another mac")
    return AuditVerdict(lines, intact=True, first_bad_line=None, problem=None)


def _broken(records: int, first_bad_line: int | None, problem: str) -> AuditVerdict:
    return AuditVerdict(records, intact=False, first_bad_line=first_bad_line, problem=problem)


def _check_line(line: bytes, previous: bytes, audit_key: bytes) -> bytes | str:
    """The line's mac if it chains after `previous`, else what is wrong with it."""
    try:
        record = json.loads(line)
    except ValueError:
        return "not a JSON line"
    if not isinstance(record, dict):
        return "not a JSON object"
    fields: dict[str, Any] = dict(record)  # pyright: ignore[reportUnknownArgumentType] -- JSON object
    given = fields.pop("mac", None)
    if sorted(fields) != sorted(AUDIT_FIELDS) or not isinstance(given, str):
        return "not an audit record"
    try:
        given_mac = bytes.fromhex(given)
    except ValueError:
        return "mac is not hex"
    if not hmac.compare_digest(line_mac(audit_key, previous, fields), given_mac):
        return "mac does not chain (edited, inserted, removed or reordered)"
    return given_mac


class AuditLog:
    """The open audit chain keyd appends to; build it with `AuditLog.open`."""

    def __init__(
        self,
        audit_path: Path,
        audit_key: bytes,
        *,
        max_bytes: int,
        keep: int,
        sync: bool,
        defer_head: bool = False,
    ) -> None:
        self.path = audit_path
        self._key = audit_key
        # Keyed once: each line and head `copy()` these instead of keying a new HMAC.
        self._line_mac = hmac.new(audit_key, digestmod=hashlib.sha256)
        self._head_sealer = _head_sealer(audit_key)
        self._clock = _Clock()
        self.max_bytes = max_bytes
        self.keep = keep
        self.sync = sync
        self.defer_head = defer_head
        self._fd = -1
        self._dir_fd = -1
        self._head_fd = -1
        self._size = 0
        self._head = _Head(lines=0, mac=GENESIS_MAC, base=GENESIS_MAC)
        # Whether the head file holds `_head`: False between a line and its head.
        self._head_written = True
        # What main() should log: a chain found not matching its head at start.
        self.startup_problem: str | None = None

    @classmethod
    def open(
        cls,
        audit_path: Path,
        audit_key: bytes | bytearray,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        sync: bool = False,
        defer_head: bool = False,
    ) -> AuditLog:
        """Open (creating it 0600, and its directory 0700, if missing) `audit_path` for
        appending and pick the chain up where it ends; raises `AuditOpenRefused`.
        `defer_head`: `append` leaves the head to `write_head` (see the module doc)."""
        if len(audit_key) != AUDIT_KEY_BYTES:
            raise ValueError(f"the audit key is {AUDIT_KEY_BYTES} bytes")
        if max_bytes < 1 or keep < 1:
            raise ValueError("max_bytes and keep are positive")
        log = cls(
            audit_path,
            bytes(audit_key),
            max_bytes=max_bytes,
            keep=keep,
            sync=sync,
            defer_head=defer_head,
        )
        try:
            audit_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            log._dir_fd = open_directory(audit_path.parent)
            log._open_current()
            log._resume()
        except OSError as exc:
            log.close()
            raise AuditOpenRefused(
                f"keyd.audit_path {audit_path} cannot be opened for appending: "
                f"{exc.strerror or exc}; point keyd.audit_path at a file keyd's account can "
                "append to, in a directory it can write"
            ) from None
        except AuditOpenRefused:
            log.close()
            raise
        try:
            log._head_fd = os.open(
                head_path(audit_path),
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o600,
            )
        except OSError as exc:
            log.close()
            raise AuditOpenRefused(
                f"audit head {head_path(audit_path)} cannot be opened: {exc.strerror}; "
                "keyd.audit_path's directory must be writable by keyd's account"
            ) from None
        return log

    def _open_current(self) -> None:
        fd = os.open(
            self.path,
            os.O_WRONLY
            | os.O_APPEND
            | os.O_CREAT
            | os.O_NOFOLLOW
            | os.O_NONBLOCK
            | os.O_CLOEXEC
            | os.O_NOCTTY,
            0o600,
        )
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise AuditOpenRefused(
                f"keyd.audit_path {self.path} is not a regular file; point it at a file"
            )
        self._fd = fd
        self._size = info.st_size

    def _resume(self) -> None:
        """Continue the chain from its end, or from the head when the files lost lines."""
        files = _kept_files(self.path)
        before = sum(_count_lines(path) for path in files[:-1])
        total = before + _count_lines(self.path)
        last = next((mac for mac in map(_last_mac, reversed(files)) if mac is not None), None)
        try:
            head = _read_head(head_path(self.path), self._key)
        except _HeadProblem as exc:
            head = None
            self.startup_problem = f"{exc}; the chain continues from its last line"
        if head is None:
            if total and self.startup_problem is None:
                self.startup_problem = (
                    f"head {head_path(self.path)} is missing while the audit files hold "
                    f"{total} lines; a tail removed before this start cannot be detected"
                )
            self._head = _Head(lines=total, mac=last or GENESIS_MAC, base=GENESIS_MAC)
        elif total >= head.lines and (head.lines == 0 or _mac_at(files, head.lines) == head.mac):
            self._head = _Head(lines=total, mac=last or head.mac, base=head.base)
        else:
            # Keep chaining from the head: the next line then breaks where lines went
            # missing, so `verify` keeps showing it.
            self.startup_problem = (
                f"the audit files hold {total} lines, the head counts {head.lines}; lines "
                "were removed or edited (run `danube audit verify`)"
            )
            self._head = _Head(lines=total, mac=head.mac, base=head.base)

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
        """Write one line, and its head unless `defer_head`, before returning; raises
        `AuditUnavailable` if either cannot be written (the caller then refuses the
        request). A head left pending is written first: it must not fall further behind."""
        if self._fd < 0:
            raise AuditUnavailable("the audit log is closed")
        self.write_head()
        # The record is encoded in two halves split where `mac` sorts (after `key_ids`,
        # before `names`), so the mac'd record and the line are both made from one
        # encoding: record = {first, rest}; line = {first, "mac", rest}.
        try:
            first = _encode_canonical({"job_id": job_id, "key_ids": [k.hex() for k in key_ids]})
            rest = _encode_canonical(
                {
                    "names": names if isinstance(names, list | tuple) else list(names),
                    "op": op,
                    "pid": pid,
                    "result": result,
                    "time": self._clock.now(),
                    "uid": uid,
                }
            )
        except UnicodeEncodeError:  # a str with lone surrogates has no UTF-8 form
            raise AuditUnavailable("a field of the record is not valid text") from None
        first = first[:-1]  # without its closing brace
        rest = rest[1:]  # without its opening brace
        chained = self._line_mac.copy()
        chained.update(b"".join((self._head.mac, first, b",", rest)))
        mac = chained.digest()
        line = b"".join((first, b',"mac":"', mac.hex().encode(), b'",', rest, b"\n"))
        try:
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._write_line(line)
        except OSError as exc:
            raise AuditUnavailable(f"{self.path}: {exc.strerror or exc}") from None
        except AuditOpenRefused as exc:  # the file made by a rotation is unfit
            raise AuditUnavailable(exc.message) from None
        # The line is in the file: the chain goes on from it whatever becomes of its head.
        self._head = _Head(lines=self._head.lines + 1, mac=mac, base=self._head.base)
        self._head_written = False
        if not self.defer_head:
            self.write_head()

    def write_head(self) -> None:
        """Bring the head up to the last line written, if it is behind; raises
        `AuditUnavailable` if it cannot be written (it stays pending, so the next
        `append` tries it again before its line, and is refused if it fails again)."""
        if self._head_written:
            return
        try:
            self._write_head(self._head)
        except OSError as exc:
            raise AuditUnavailable(f"{head_path(self.path)}: {exc.strerror or exc}") from None
        self._head_written = True

    def _write_line(self, line: bytes) -> None:
        complete = False
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise _short_write(written, len(line))
            if self.sync:
                os.fdatasync(self._fd)
            complete = True
        finally:
            if not complete:
                # Cut a partial (or unsynced) line off, so the file holds only lines
                # whose requests were answered, each on a line of its own.
                os.ftruncate(self._fd, self._size)
        self._size += len(line)

    def _write_head(self, head: _Head) -> None:
        """Overwrite the head in place with one pwrite of a fixed-size record: a killed
        keyd leaves the old record or the new one (a write(2) is not cut short by a
        signal), and 320 bytes at offset 0 lie in one disk sector, which drives write
        whole. A rename per line (temporary file, rename) cost a p99 of milliseconds
        here; see benchmarks/audit_bench.py."""
        record = head.encode(self._head_sealer)
        if os.pwrite(self._head_fd, record, 0) != len(record):
            raise _short_write(0, len(record))
        if self.sync:
            os.fdatasync(self._head_fd)

    def _rotate(self) -> None:
        """Current file to `.1`, older ones up one, the oldest past `keep` dropped; the
        next line (the new file's first) chains from the old file's last."""
        oldest = rotated_path(self.path, self.keep)
        if oldest.exists():
            dropped_lines = _count_lines(oldest)
            base = _last_mac(oldest) or self._head.base
            self._head = _Head(
                lines=self._head.lines - dropped_lines, mac=self._head.mac, base=base
            )
            self._write_head(self._head)
            oldest.unlink()
        for generation in range(self.keep - 1, 0, -1):
            source = rotated_path(self.path, generation)
            if source.exists():
                source.rename(rotated_path(self.path, generation + 1))
        self.path.rename(rotated_path(self.path, 1))
        os.close(self._fd)
        self._fd = -1
        self._open_current()
        os.fsync(self._dir_fd)

    def verify(self) -> AuditVerdict:
        """`verify` of this log under its own key (for the `audit_verify` op). It reads
        every kept file, so it takes about as long as reading them (seconds for several
        full 64 MiB files)."""
        return verify(self.path, self._key)

    def close(self) -> None:
        """Write a pending head (best effort: a head left one line behind is accepted at
        the next open, as after a kill) and close the files."""
        if self._head_fd >= 0:
            with contextlib.suppress(AuditUnavailable):
                self.write_head()
        for fd in (self._fd, self._dir_fd, self._head_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._dir_fd = self._head_fd = -1


class _Clock:
    """The record's `time`: ISO 8601 UTC to the microsecond with a `Z`, as
    `datetime.isoformat(timespec="microseconds")` writes it; the date and time of day
    are formatted once per second, not per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            self._second = second
        return f"{self._prefix}{nanoseconds // 1000:06d}Z"


def _short_write(written: int, wanted: int) -> OSError:
    return OSError(errno.EFBIG, f"short write ({written} of {wanted} bytes)")


def _mac_at(files: Sequence[Path], number: int) -> bytes | None:
    """The `mac` of line `number` (from 1) across `files`."""
    seen = 0
    for path in files:
        for line in _lines(path):
            seen += 1
            if seen == number:
                return _mac_of(line)
    return None
