"""How many encryptions each key has made, persisted so a restart never counts back
(DESIGN 14: AES-GCM with random 96-bit nonces is safe up to about 2**32 per key).

The count is persisted in reserved blocks: before keyd uses counts up to N it durably
writes "reserved up to N" to `<key file>.<key id hex>.count` beside the key (one small
file per key, written by temporary file, fsync and rename). A restart takes the
reserved figure as the count, so a crash can skip ahead by at most one block, never
count back. The files are not secret, but they live in the key directory so a backup of
the directory carries them with the keys, and they stay when a key is retired (a key
restored from a backup keeps its count).

File content: the decimal reserved count and a newline.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from danube_keyd.atomic_file import open_directory, write_new_file
from danube_shared.errors import DanubeError

ENCRYPTION_LIMIT = 2**32
RESERVE_BLOCK = 2**16
_MAX_COUNT_FILE_BYTES = 32


class KeyExhausted(DanubeError):
    """The key has made as many encryptions as it safely can."""

    code = "key_exhausted"

    def __init__(self, key_id: bytes, limit: int) -> None:
        super().__init__(
            f"key {key_id.hex()} has reached its limit of {limit} encryptions; rotate the "
            "key (`danube key rotate`)"
        )


class CounterUnavailable(DanubeError):
    """A count file cannot be read or written; the caller refuses to encrypt (a count
    that cannot be kept would let the limit be passed unseen)."""

    code = "internal"


def count_file_path(key_path: Path, key_id: bytes) -> Path:
    """Where the reserved count of `key_id` lives."""
    return key_path.with_name(f"{key_path.name}.{key_id.hex()}.count")


class EncryptionCounter:
    """Counts encryptions per key id against `limit`, reserving `block` at a time."""

    def __init__(
        self, key_path: Path, *, limit: int = ENCRYPTION_LIMIT, block: int = RESERVE_BLOCK
    ) -> None:
        if limit < 1 or block < 1:
            raise ValueError("limit and block are positive")
        self.key_path = key_path
        self.limit = limit
        self.block = block
        self._used: dict[bytes, int] = {}
        self._reserved: dict[bytes, int] = {}

    def reserve(self, key_id: bytes, n: int) -> None:
        """Count `n` encryptions under `key_id` before they are made; raises
        `KeyExhausted` (counting none of them) if they would pass the limit, and
        `CounterUnavailable` if a new block cannot be reserved durably."""
        if n < 0:
            raise ValueError("n is not negative")
        used = self.count(key_id)
        wanted = used + n
        if wanted > self.limit:
            raise KeyExhausted(key_id, self.limit)
        if wanted > self._reserved[key_id]:
            reserved = min(max(wanted, used + self.block), self.limit)
            self._write(key_id, reserved)
            self._reserved[key_id] = reserved
        self._used[key_id] = wanted

    def count(self, key_id: bytes) -> int:
        """Encryptions counted under `key_id` (after a restart: what was reserved)."""
        if key_id not in self._used:
            reserved = self._read(key_id)
            self._used[key_id] = reserved
            self._reserved[key_id] = reserved
        return self._used[key_id]

    def counts(self) -> dict[str, int]:
        """The counts of every key id seen in this process, by hex id (for `stats`)."""
        return {key_id.hex(): used for key_id, used in sorted(self._used.items())}

    def _read(self, key_id: bytes) -> int:
        path = count_file_path(self.key_path, key_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise CounterUnavailable(
                f"encryption count file {path} cannot be opened: {exc.strerror}"
            ) from None
        try:
            text = os.read(fd, _MAX_COUNT_FILE_BYTES + 1)
        except OSError as exc:
            raise CounterUnavailable(
                f"encryption count file {path} cannot be read: {exc.strerror}"
            ) from None
        finally:
            os.close(fd)
        try:
            value = int(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            value = -1
        if value < 0 or len(text) > _MAX_COUNT_FILE_BYTES:
            # Never guess: a count read as zero would let the key pass its limit.
            raise CounterUnavailable(
                f"encryption count file {path} is not a count; restore it from your backup, "
                "or rotate the key and retire this one"
            )
        return value

    def _write(self, key_id: bytes, reserved: int) -> None:
        path = count_file_path(self.key_path, key_id)
        try:
            dir_fd = open_directory(path.parent)
            try:
                write_new_file(dir_fd, path.name, f"{reserved}\n".encode(), replace=True)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise CounterUnavailable(
                f"encryption count file {path} cannot be written: "
                f"{exc.strerror or errno.errorcode.get(exc.errno or 0, 'error')}"
            ) from None
