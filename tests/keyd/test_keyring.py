"""The keyring: old keys beside the active one under the key file rules, and the file
moves of `danube key rotate` and `retire`, including a rotation killed half-way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from danube_keyd.keyring import Keyring, RetireRefused, old_key_path, parse_key_id, retire, rotate
from danube_shared.errors import InvalidInput, KeyFileError
from danube_shared.keyd_protocol import key_id_for
from tests.support.isolation import program_environment
from tests.support.keyd import KeydHome


def test_a_single_key_is_the_active_one(keyd_home: KeydHome) -> None:
    """With no old keys the keyring holds the active key alone, under its id."""
    ring = Keyring.load(keyd_home.key_path)
    assert ring.active_id == key_id_for(keyd_home.key_path.read_bytes())
    assert ring.key_ids == (ring.active_id,)
    assert ring.by_id(ring.active_id) is ring.active


def test_rotate_keeps_the_old_key_under_its_id_and_both_decrypt(keyd_home: KeydHome) -> None:
    """After a rotation the new key encrypts, and a ciphertext made under the old key
    still opens (the old key is loaded from `<key file>.<old id>`)."""
    before = Keyring.load(keyd_home.key_path)
    sealed = before.active.encrypt(b"value", "secret:1")
    old_id, new_id = rotate(keyd_home.key_path)
    assert old_id == before.active_id
    assert old_key_path(keyd_home.key_path, old_id).read_bytes() != keyd_home.key_path.read_bytes()
    after = Keyring.load(keyd_home.key_path)
    assert after.active_id == new_id != old_id
    assert after.key_ids == (new_id, old_id)
    old = after.by_id(sealed[1:5])
    assert old is not None
    assert old.decrypt(sealed, "secret:1") == b"value"
    assert oct(old_key_path(keyd_home.key_path, old_id).stat().st_mode & 0o777) == "0o600"
    assert oct(keyd_home.key_path.stat().st_mode & 0o777) == "0o600"


def test_each_key_buffer_is_shown_to_the_hook_before_it_is_zeroed(keyd_home: KeydHome) -> None:
    """`on_key_buffer` sees every key's bytes (for MADV_DONTDUMP); the buffers are
    zeroed once the ciphers are built."""
    rotate(keyd_home.key_path)
    seen: list[tuple[bytes, bytearray]] = []
    ring = Keyring.load(keyd_home.key_path, on_key_buffer=lambda b: seen.append((bytes(b), b)))
    assert sorted(key_id_for(key) for key, _ in seen) == sorted(ring.key_ids)
    assert all(buffer == bytes(32) for _, buffer in seen)


def test_an_old_key_whose_name_lies_about_its_id_is_refused(keyd_home: KeydHome) -> None:
    """A file named for one id holding another key is refused, naming both ids."""
    liar = keyd_home.key_path.with_name(keyd_home.key_path.name + ".0badc0de")
    liar.write_bytes(os.urandom(32))
    liar.chmod(0o600)
    with pytest.raises(KeyFileError, match="not the 0badc0de its name says") as refused:
        Keyring.load(keyd_home.key_path)
    assert str(liar) in refused.value.message


def test_an_old_key_is_under_the_same_file_rules(keyd_home: KeydHome) -> None:
    """An old key readable by others is refused like the active one would be."""
    old_id, _ = rotate(keyd_home.key_path)
    old_key_path(keyd_home.key_path, old_id).chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Keyring.load(keyd_home.key_path)


def test_other_files_in_the_key_directory_are_not_keys(keyd_home: KeydHome) -> None:
    """Names that are not `<key file>.<8 lower-case hex>` (counts, the audit key, upper
    case) are not loaded as keys."""
    for name in ("encryption.key.ABCDEF01", "encryption.key.abcdef01.count", "audit.key"):
        (keyd_home.key_path.parent / name).write_bytes(b"x")
    assert len(Keyring.load(keyd_home.key_path).key_ids) == 1


def test_a_rotation_stopped_after_the_link_loads_the_old_key_once(keyd_home: KeydHome) -> None:
    """The state a crash between the two steps of `rotate` leaves (the active key also
    under its id name) loads, with the old key active and nothing lost."""
    active_id = key_id_for(keyd_home.key_path.read_bytes())
    os.link(keyd_home.key_path, old_key_path(keyd_home.key_path, active_id))
    ring = Keyring.load(keyd_home.key_path)
    assert ring.key_ids == (active_id,)
    old_id, new_id = rotate(keyd_home.key_path)  # the rerun completes the rotation
    assert old_id == active_id
    assert Keyring.load(keyd_home.key_path).key_ids == (new_id, old_id)


def test_a_rotation_killed_at_any_point_leaves_a_loadable_keyring(keyd_home: KeydHome) -> None:
    """Rotations in a child process killed with SIGKILL at random moments: every time
    the keyring still loads and every key ever active is still in it."""
    ever_active = {key_id_for(keyd_home.key_path.read_bytes())}
    loop = (
        "import sys\n"
        "from pathlib import Path\n"
        "from danube_keyd.keyring import rotate\n"
        "while True:\n"
        "    old, new = rotate(Path(sys.argv[1]))\n"
        "    print(new.hex(), flush=True)\n"
    )
    for delay in (0.05, 0.15, 0.3, 0.5):
        child = subprocess.Popen(
            [sys.executable, "-c", loop, str(keyd_home.key_path)],
            stdout=subprocess.PIPE,
            env=program_environment(),
        )
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(delay)
        finally:
            child.kill()  # SIGKILL by pid, wherever rotate happens to be
            out, _ = child.communicate(timeout=10)
        ever_active |= {bytes.fromhex(line) for line in out.decode().split()}
        ring = Keyring.load(keyd_home.key_path)
        ever_active.add(ring.active_id)
        assert ever_active <= set(ring.key_ids)
    rotate(keyd_home.key_path)  # a rotation after the kills clears their temporary files
    assert not [p for p in keyd_home.key_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_retire_deletes_an_old_key(keyd_home: KeydHome) -> None:
    """Retiring an old key removes its file; the keyring no longer holds it."""
    old_id, new_id = rotate(keyd_home.key_path)
    removed = retire(keyd_home.key_path, old_id)
    assert not removed.exists()
    assert Keyring.load(keyd_home.key_path).key_ids == (new_id,)


def test_retire_refuses_the_active_key(keyd_home: KeydHome) -> None:
    """The active key is never retired, even when named by its id."""
    active_id = key_id_for(keyd_home.key_path.read_bytes())
    os.link(keyd_home.key_path, old_key_path(keyd_home.key_path, active_id))
    with pytest.raises(RetireRefused, match="is the active key"):
        retire(keyd_home.key_path, active_id)
    assert keyd_home.key_path.exists()
    assert old_key_path(keyd_home.key_path, active_id).exists()


def test_retire_of_an_unknown_id_is_refused(keyd_home: KeydHome) -> None:
    """Retiring an id with no file is refused, naming the id."""
    with pytest.raises(RetireRefused, match="no old key 0badc0de"):
        retire(keyd_home.key_path, bytes.fromhex("0badc0de"))


@pytest.mark.parametrize("text", ["0badc0d", "0badc0dee", "0badc0dg", ""])
def test_a_key_id_is_8_hex_digits(text: str) -> None:
    """`parse_key_id` takes only 8 hex digits."""
    with pytest.raises(InvalidInput):
        parse_key_id(text)


def test_a_key_id_in_upper_case_parses(tmp_path: Path) -> None:
    """`parse_key_id` accepts either case (operators copy ids around)."""
    assert parse_key_id("0BADC0DE") == bytes.fromhex("0badc0de")
