"""The persisted encryption count: reserved in blocks, never counting back, and
`KeyExhausted` at the limit."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from danube_keyd.encryption_counter import (
    CounterUnavailable,
    EncryptionCounter,
    KeyExhausted,
    count_file_path,
)

KEY_ID = bytes.fromhex("0a0b0c0d")


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "encryption.key"


def test_a_key_never_seen_counts_zero(key_path: Path) -> None:
    """No count file: zero, and nothing written until something is reserved."""
    assert EncryptionCounter(key_path).count(KEY_ID) == 0
    assert not count_file_path(key_path, KEY_ID).exists()


def test_reserving_writes_a_whole_block_ahead(key_path: Path) -> None:
    """The first encryption reserves a block: the file says block, the count says 1."""
    counter = EncryptionCounter(key_path, block=100)
    counter.reserve(KEY_ID, 1)
    assert counter.count(KEY_ID) == 1
    assert count_file_path(key_path, KEY_ID).read_text() == "100\n"
    assert stat.S_IMODE(count_file_path(key_path, KEY_ID).stat().st_mode) == 0o600


def test_a_restart_never_counts_back(key_path: Path) -> None:
    """A new counter (keyd restarted, or killed) starts from what was reserved, which
    is at least what was used."""
    first = EncryptionCounter(key_path, block=100)
    for _ in range(150):
        first.reserve(KEY_ID, 1)
    second = EncryptionCounter(key_path, block=100)
    assert second.count(KEY_ID) >= 150
    second.reserve(KEY_ID, 1)
    third = EncryptionCounter(key_path, block=100)
    assert third.count(KEY_ID) > second.count(KEY_ID) - 1 >= 150


def test_a_batch_larger_than_a_block_is_reserved_whole(key_path: Path) -> None:
    """Reserving more than a block at once persists the whole batch first."""
    counter = EncryptionCounter(key_path, block=10)
    counter.reserve(KEY_ID, 25)
    assert EncryptionCounter(key_path).count(KEY_ID) >= 25


def test_the_limit_raises_key_exhausted_and_counts_nothing(key_path: Path) -> None:
    """Up to the limit works; one past it is `KeyExhausted`, and the count stays."""
    counter = EncryptionCounter(key_path, limit=10, block=4)
    counter.reserve(KEY_ID, 10)
    with pytest.raises(KeyExhausted, match="rotate the key") as exhausted:
        counter.reserve(KEY_ID, 1)
    assert exhausted.value.code == "key_exhausted"
    assert counter.count(KEY_ID) == 10


def test_a_seeded_count_near_the_default_limit_exhausts(key_path: Path) -> None:
    """A count file seeded at 2**32 - 2 leaves room for two encryptions, not three."""
    count_file_path(key_path, KEY_ID).write_text(f"{2**32 - 2}\n")
    counter = EncryptionCounter(key_path)
    counter.reserve(KEY_ID, 2)
    with pytest.raises(KeyExhausted):
        counter.reserve(KEY_ID, 1)


def test_counts_are_per_key(key_path: Path) -> None:
    """Each key id has its own count and file."""
    other = bytes.fromhex("01020304")
    counter = EncryptionCounter(key_path, limit=5)
    counter.reserve(KEY_ID, 5)
    counter.reserve(other, 2)
    assert counter.counts() == {other.hex(): 2, KEY_ID.hex(): 5}


@pytest.mark.parametrize("content", ["", "lots\n", "-5\n", "1" * 40])
def test_a_damaged_count_file_is_never_read_as_zero(key_path: Path, content: str) -> None:
    """A count file that holds no count refuses (fail closed) instead of restarting at 0."""
    count_file_path(key_path, KEY_ID).write_text(content)
    with pytest.raises(CounterUnavailable, match="is not a count"):
        EncryptionCounter(key_path).reserve(KEY_ID, 1)


def test_a_count_that_cannot_be_written_refuses_and_keeps_the_old_file(key_path: Path) -> None:
    """If the next block cannot be reserved (the key directory is gone: replaced by a
    file, which stops root too), `reserve` raises and counts nothing."""
    counter = EncryptionCounter(key_path, block=2)
    counter.reserve(KEY_ID, 2)
    directory = key_path.parent
    directory.rename(directory.with_name("moved"))
    directory.write_bytes(b"")  # a file where the directory was
    try:
        with pytest.raises(CounterUnavailable, match="cannot be written"):
            counter.reserve(KEY_ID, 1)
        assert counter.count(KEY_ID) == 2
    finally:
        directory.unlink()
        directory.with_name("moved").rename(directory)
    assert count_file_path(key_path, KEY_ID).read_text() == "2\n"


def test_the_count_file_is_replaced_atomically(key_path: Path) -> None:
    """A reservation leaves no temporary file and replaces the count file's inode (a
    rename, never an in-place rewrite a crash could tear)."""
    counter = EncryptionCounter(key_path, block=1)
    counter.reserve(KEY_ID, 1)
    before = count_file_path(key_path, KEY_ID).stat().st_ino
    counter.reserve(KEY_ID, 1)
    assert count_file_path(key_path, KEY_ID).stat().st_ino != before
    assert sorted(p.name for p in key_path.parent.iterdir()) == [
        count_file_path(key_path, KEY_ID).name
    ]
