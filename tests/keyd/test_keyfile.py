"""Key file rules (each refusal names the path and the fix) and `danube keygen`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from danube_keyd.keyfile import load_key, open_key_directory, read_key_at, write_new_key
from danube_shared.errors import KeyFileError
from tests.support.isolation import program_environment
from tests.support.keyd import KEYD, KeydHome

DANUBE = Path(sys.executable).with_name("danube")


def test_a_good_key_file_loads(keyd_home: KeydHome) -> None:
    """A 32-byte 0600 regular file owned by keyd's uid in a 0700 directory loads."""
    key = load_key(keyd_home.key_path)
    assert isinstance(key, bytearray)
    assert bytes(key) == keyd_home.key_path.read_bytes()


def test_missing_key_is_refused_with_keygen_as_the_fix(keyd_home: KeydHome) -> None:
    """A missing file is refused, naming the path and `danube keygen`."""
    keyd_home.key_path.unlink()
    with pytest.raises(KeyFileError, match="does not exist") as refused:
        load_key(keyd_home.key_path)
    assert str(keyd_home.key_path) in refused.value.message
    assert "danube keygen" in refused.value.message


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_wrong_size_is_refused(keyd_home: KeydHome, size: int) -> None:
    """A file of any size but 32 bytes is refused, saying how many bytes it holds."""
    keyd_home.key_path.write_bytes(os.urandom(size))
    with pytest.raises(KeyFileError, match=f"holds {size} bytes, not 32"):
        load_key(keyd_home.key_path)


def test_symlink_is_refused_even_to_a_good_key(keyd_home: KeydHome) -> None:
    """A symlink is refused although its target would pass every rule."""
    target = keyd_home.key_path.with_name("real.key")
    keyd_home.key_path.rename(target)
    keyd_home.key_path.symlink_to(target)
    with pytest.raises(KeyFileError, match="is a symlink"):
        load_key(keyd_home.key_path)


def test_a_fifo_key_path_makes_keyd_exit_2_without_waiting_for_a_writer(
    keyd_home: KeydHome,
) -> None:
    """A FIFO at the key path is refused at once (exit 2, one line naming the path), not
    waited on: opening a FIFO for reading blocks until a writer comes, and none will.
    The 10 s timeout is only the hang guard; the refusal takes well under a second."""
    keyd_home.key_path.unlink()
    os.mkfifo(keyd_home.key_path, 0o600)
    result = subprocess.run(
        [str(KEYD), "--config", str(keyd_home.config_path)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=10,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"key file {keyd_home.key_path} is not a regular file" in line


def test_a_fifo_key_path_is_refused_by_load_key(keyd_home: KeydHome) -> None:
    """`load_key` on a FIFO raises the not-a-regular-file refusal (run in a child process
    with a timeout, so a regression hangs the child, not the suite)."""
    keyd_home.key_path.unlink()
    os.mkfifo(keyd_home.key_path, 0o600)
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from danube_keyd.keyfile import load_key\n"
        "from danube_shared.errors import KeyFileError\n"
        "try:\n"
        "    load_key(Path(sys.argv[1]))\n"
        "except KeyFileError as exc:\n"
        "    print(exc.message)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(keyd_home.key_path)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=10,
        check=True,
    )
    assert "is not a regular file" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown a directory to another uid")
def test_a_key_directory_owned_by_another_uid_is_refused(keyd_home: KeydHome) -> None:
    """The key directory must be keyd's own: its owner could swap the key file."""
    os.chown(keyd_home.key_path.parent, 65534, -1)
    with pytest.raises(KeyFileError, match=r"key directory .* is owned by uid 65534") as refused:
        load_key(keyd_home.key_path)
    assert f"chown {os.geteuid()} {keyd_home.key_path.parent}" in refused.value.message


def test_the_key_is_read_from_the_directory_that_was_checked(keyd_home: KeydHome) -> None:
    """`read_key_at` reads through the directory descriptor: the directory renamed away
    and replaced after the check still yields the checked directory's key."""
    checked = load_key(keyd_home.key_path)
    directory = keyd_home.key_path.parent
    dir_fd = open_key_directory(directory, owner_uid=os.geteuid())
    try:
        directory.rename(directory.with_name("moved"))
        directory.mkdir(mode=0o700)
        (directory / keyd_home.key_path.name).write_bytes(os.urandom(32))
        (directory / keyd_home.key_path.name).chmod(0o600)
        assert read_key_at(dir_fd, keyd_home.key_path, owner_uid=os.geteuid()) == checked
    finally:
        os.close(dir_fd)


def test_a_directory_is_refused(keyd_home: KeydHome) -> None:
    """Something that is not a regular file is refused."""
    keyd_home.key_path.unlink()
    keyd_home.key_path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(keyd_home.key_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown a file to another uid")
def test_another_owner_is_refused_with_chown_as_the_fix(keyd_home: KeydHome) -> None:
    """A key owned by another uid is refused, naming `chown <keyd uid> PATH`."""
    os.chown(keyd_home.key_path, 65534, -1)
    with pytest.raises(KeyFileError, match="owned by uid 65534") as refused:
        load_key(keyd_home.key_path)
    assert f"chown {os.geteuid()} {keyd_home.key_path}" in refused.value.message


def test_owner_is_checked_against_the_given_uid(keyd_home: KeydHome) -> None:
    """The owner rule compares with keyd's uid, not with whoever happens to read it."""
    with pytest.raises(KeyFileError, match="not keyd's uid 4242"):
        load_key(keyd_home.key_path, owner_uid=4242)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601, 0o700 | 0o040])
def test_group_or_other_bits_are_refused_with_chmod_600(keyd_home: KeydHome, mode: int) -> None:
    """Any group or other permission bit is refused, naming `chmod 600 PATH`."""
    keyd_home.key_path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 {keyd_home.key_path}"):
        load_key(keyd_home.key_path)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o720])
def test_group_or_world_writable_directory_is_refused(keyd_home: KeydHome, mode: int) -> None:
    """A key directory others can write to is refused, naming `chmod go-w DIR`."""
    keyd_home.key_path.parent.chmod(mode)
    with pytest.raises(KeyFileError, match="group- or world-writable") as refused:
        load_key(keyd_home.key_path)
    assert f"chmod go-w {keyd_home.key_path.parent}" in refused.value.message


def test_readable_but_not_writable_directory_is_accepted(keyd_home: KeydHome) -> None:
    """Only write bits on the directory matter: 0755 is fine."""
    keyd_home.key_path.parent.chmod(0o755)
    assert len(load_key(keyd_home.key_path)) == 32


def test_write_new_key_makes_a_0600_file_in_a_new_0700_directory(tmp_path: Path) -> None:
    """A new key is 32 bytes, mode 0600, in a directory created 0700."""
    path = tmp_path / "keys" / "encryption.key"
    write_new_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_bytes()) == 32
    assert [p.name for p in path.parent.iterdir()] == ["encryption.key"]  # no temp file left


def test_write_new_key_uses_an_existing_0700_directory(tmp_path: Path) -> None:
    """An existing directory that only its owner can enter takes the new key."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    keys.chmod(0o700)
    write_new_key(keys / "encryption.key")
    assert len((keys / "encryption.key").read_bytes()) == 32


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o705, 0o710, 0o701, 0o740])
def test_write_new_key_refuses_an_existing_directory_others_can_enter(
    tmp_path: Path, mode: int
) -> None:
    """An existing key directory with any group or other bit is refused, naming the
    directory and `chmod 700 DIR`, and no key (nor temporary file) is written."""
    keys = tmp_path / "keys"
    keys.mkdir()
    keys.chmod(mode)
    with pytest.raises(KeyFileError) as refused:
        write_new_key(keys / "encryption.key")
    assert f"key directory {keys} has mode {mode:04o}" in refused.value.message
    assert f"fix: chmod 700 {keys}" in refused.value.message
    assert list(keys.iterdir()) == []


def test_write_new_key_draws_a_different_key_each_time(tmp_path: Path) -> None:
    """Two new keys differ (they come from the OS's CSPRNG)."""
    write_new_key(tmp_path / "a" / "k")
    write_new_key(tmp_path / "b" / "k")
    assert (tmp_path / "a" / "k").read_bytes() != (tmp_path / "b" / "k").read_bytes()


def test_write_new_key_refuses_an_existing_file_and_leaves_it_untouched(
    keyd_home: KeydHome,
) -> None:
    """An existing key is never overwritten."""
    before = keyd_home.key_path.read_bytes()
    with pytest.raises(FileExistsError):
        write_new_key(keyd_home.key_path)
    assert keyd_home.key_path.read_bytes() == before


def _keygen(home: KeydHome) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DANUBE), "keygen", "--config", str(home.config_path)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=30,
        check=False,
    )


def test_danube_keygen_writes_a_key_keyd_accepts(keyd_home: KeydHome) -> None:
    """`danube keygen` exits 0 and its key passes keyd's own rules."""
    keyd_home.key_path.unlink()
    keyd_home.key_path.parent.rmdir()
    result = _keygen(keyd_home)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(keyd_home.key_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(keyd_home.key_path.stat().st_mode) == 0o600
    assert len(load_key(keyd_home.key_path)) == 32
    logged = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(line["message"].startswith("key written") for line in logged)


def test_danube_keygen_refuses_when_a_key_exists_and_leaves_it(keyd_home: KeydHome) -> None:
    """`danube keygen` over an existing key exits 1 and the file is byte-for-byte intact."""
    before = keyd_home.key_path.read_bytes()
    mtime = keyd_home.key_path.stat().st_mtime_ns
    result = _keygen(keyd_home)
    assert result.returncode == 1
    assert "key file exists" in result.stderr or "a key file exists" in result.stderr
    assert keyd_home.key_path.read_bytes() == before
    assert keyd_home.key_path.stat().st_mtime_ns == mtime
    assert before.hex() not in result.stderr


def test_danube_keygen_refuses_an_existing_0755_directory_with_one_line(
    keyd_home: KeydHome,
) -> None:
    """`danube keygen` into an existing 0755 directory exits 1 with one error line that
    names the directory and `chmod 700 DIR`, and writes no key."""
    keys = keyd_home.key_path.parent
    keyd_home.key_path.unlink()
    keys.chmod(0o755)
    result = _keygen(keyd_home)
    assert result.returncode == 1
    (line,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert line["level"] == "error"
    assert str(keys) in line["reason"]
    assert f"chmod 700 {keys}" in line["reason"]
    assert list(keys.iterdir()) == []
