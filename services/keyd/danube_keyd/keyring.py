"""The keyring: the active key and the older keys beside it, and the file moves of
`danube key rotate` and `danube key retire` (DESIGN 14).

The active key is at `keyd.key_path`; an older key is beside it as
`<key file>.<key id as 8 lower-case hex digits>`. Every file is under the key file rules
of `danube_keyd.keyfile`, and a file whose name's id is not its content's id is refused.
A `Keyring` is immutable: a reload builds a new one and the caller swaps the reference,
so a request never sees half a reload.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from danube_keyd.aead import Aead
from danube_keyd.atomic_file import fsync_directory, write_new_file
from danube_keyd.keyfile import open_key_directory, read_key_at
from danube_shared.errors import DanubeError, InvalidInput, KeyFileError
from danube_shared.keyd_protocol import KEY_BYTES, KEY_ID_BYTES, key_id_for

_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")


class RetireRefused(DanubeError):
    """The key named for retirement is the active key, or no such old key file exists."""

    code = "retire_refused"


def key_id_hex(key_id: bytes) -> str:
    """The printed form of a key id: 8 lower-case hex digits."""
    return key_id.hex()


def parse_key_id(text: str) -> bytes:
    """The key id printed as 8 hex digits (any case), as `retire` takes it."""
    if not _KEY_ID_HEX.fullmatch(text.lower()):
        raise InvalidInput(
            f"a key id is 8 hex digits (as `danube key status` prints it), not {text!r}"
        )
    return bytes.fromhex(text)


def old_key_path(key_path: Path, key_id: bytes) -> Path:
    """Where the key with `key_id` lives once it is no longer the active one."""
    return key_path.with_name(f"{key_path.name}.{key_id_hex(key_id)}")


@dataclass(frozen=True, slots=True)
class Keyring:
    """Every loaded key, by id; `active` encrypts, any of them decrypts."""

    active: Aead
    keys: Mapping[bytes, Aead]

    @property
    def active_id(self) -> bytes:
        return self.active.key_id

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        """The active key's id first, then the older ones in id order."""
        return (self.active_id, *sorted(k for k in self.keys if k != self.active_id))

    def by_id(self, key_id: bytes) -> Aead | None:
        """The cipher for `key_id` (the ciphertext's bytes 1..4), or None if not loaded."""
        return self.keys.get(key_id)

    @classmethod
    def load(
        cls,
        key_path: Path,
        *,
        owner_uid: int | None = None,
        on_key_buffer: Callable[[bytearray], object] | None = None,
    ) -> Keyring:
        """Load the active key and every `<key file>.<id>` beside it, each under the key
        file rules; raises `KeyFileError` naming the first file refused and its fix.
        `on_key_buffer` sees each key's buffer before it is used (keyd passes
        `hardening.exclude_from_dumps` when it could not lock its memory)."""
        uid = os.geteuid() if owner_uid is None else owner_uid
        dir_fd = open_key_directory(key_path.parent, owner_uid=uid)
        try:
            active = _load_cipher(dir_fd, key_path, uid, expected_id=None, seen=on_key_buffer)
            keys = {active.key_id: active}
            for key_id in _old_key_ids(dir_fd, key_path):
                if key_id == active.key_id:
                    # A rotation that stopped after saving the old key under its id and
                    # before writing the new one: the same key twice, nothing lost.
                    continue
                keys[key_id] = _load_cipher(
                    dir_fd,
                    old_key_path(key_path, key_id),
                    uid,
                    expected_id=key_id,
                    seen=on_key_buffer,
                )
        finally:
            os.close(dir_fd)
        return cls(active=active, keys=keys)


def _old_key_ids(dir_fd: int, key_path: Path) -> list[bytes]:
    prefix = key_path.name + "."
    found: list[bytes] = []
    for name in os.listdir(dir_fd):
        suffix = name[len(prefix) :] if name.startswith(prefix) else ""
        if _KEY_ID_HEX.fullmatch(suffix):
            found.append(bytes.fromhex(suffix))
    return sorted(found)


def _load_cipher(
    dir_fd: int,
    path: Path,
    uid: int,
    *,
    expected_id: bytes | None,
    seen: Callable[[bytearray], object] | None = None,
) -> Aead:
    key = read_key_at(dir_fd, path, owner_uid=uid)
    try:
        if seen is not None:
            seen(key)
        if expected_id is not None and key_id_for(key) != expected_id:
            raise KeyFileError(
                f"key file {path} holds key id {key_id_hex(key_id_for(key))}, not the "
                f"{key_id_hex(expected_id)} its name says; restore the right file from your "
                "backup, or rename it to the id it holds"
            )
        return Aead(key)
    finally:
        key[:] = bytes(KEY_BYTES)


def rotate(key_path: Path, *, owner_uid: int | None = None) -> tuple[bytes, bytes]:
    """Make a new random key the active one and keep the old one under its id name;
    returns (old id, new id). The caller then has keyd reload.

    Order, so that a crash at any point leaves a loadable keyring with no key lost:
    1. hard-link the active file to `<key file>.<old id>` (fsync the directory): the old
       key now has two names;
    2. write the new key to a temporary file, fsync it, rename it over the active name
       and fsync the directory. Before the rename the active key is the old one (also
       present under its id); after it, the new one.
    """
    uid = os.geteuid() if owner_uid is None else owner_uid
    dir_fd = open_key_directory(key_path.parent, owner_uid=uid)
    try:
        old = read_key_at(dir_fd, key_path, owner_uid=uid)
        old_id = key_id_for(old)
        old[:] = bytes(KEY_BYTES)
        _remove_stale_temporaries(dir_fd, key_path)
        taken = {old_id, *_old_key_ids(dir_fd, key_path)}
        saved = old_key_path(key_path, old_id)
        try:
            os.link(
                key_path.name,
                saved.name,
                src_dir_fd=dir_fd,
                dst_dir_fd=dir_fd,
                follow_symlinks=False,
            )
        except FileExistsError:
            # Left by an earlier rotation that stopped here: keep it only if it is this key.
            _load_cipher(dir_fd, saved, uid, expected_id=old_id)
        fsync_directory(dir_fd)
        new = bytearray(KEY_BYTES)
        while True:
            new[:] = secrets.token_bytes(KEY_BYTES)
            new_id = key_id_for(new)
            if new_id not in taken:  # two keys under one id could not be told apart
                break
        try:
            write_new_file(dir_fd, key_path.name, new, replace=True)
        finally:
            new[:] = bytes(KEY_BYTES)
    finally:
        os.close(dir_fd)
    return old_id, new_id


def _remove_stale_temporaries(dir_fd: int, key_path: Path) -> None:
    """Remove new keys an interrupted rotation wrote but never made active: they never
    encrypted anything, and key material should not lie around."""
    prefix = f".{key_path.name}."
    for name in os.listdir(dir_fd):
        if name.startswith(prefix) and name.endswith(".tmp"):
            os.unlink(name, dir_fd=dir_fd)


def retire(key_path: Path, key_id: bytes, *, owner_uid: int | None = None) -> Path:
    """Delete the old key file for `key_id` and return its path; never the active key.
    Whether any stored secret still uses the key is the caller's check (the database)."""
    if len(key_id) != KEY_ID_BYTES:
        raise InvalidInput(f"a key id is {KEY_ID_BYTES} bytes")
    uid = os.geteuid() if owner_uid is None else owner_uid
    dir_fd = open_key_directory(key_path.parent, owner_uid=uid)
    try:
        active = read_key_at(dir_fd, key_path, owner_uid=uid)
        active_id = key_id_for(active)
        active[:] = bytes(KEY_BYTES)
        if key_id == active_id:
            raise RetireRefused(
                f"key {key_id_hex(key_id)} is the active key ({key_path}); rotate first "
                "(`danube key rotate`), rewrap, then retire it"
            )
        path = old_key_path(key_path, key_id)
        try:
            os.unlink(path.name, dir_fd=dir_fd)
        except FileNotFoundError:
            raise RetireRefused(
                f"no old key {key_id_hex(key_id)} in {key_path.parent} (no file {path}); "
                "`danube key status` lists the loaded key ids"
            ) from None
        fsync_directory(dir_fd)
    finally:
        os.close(dir_fd)
    return path
