"""`danube up` refuses a bad key file or a bad config fast, in the program's own words,
with exit code 2, and leaves no process behind."""

from __future__ import annotations

import os
import socket
import time

import pytest

from danube_keyd.keyfile import write_new_key
from tests.support.stack import Stacks, new_home, processes_of

pytestmark = pytest.mark.e2e

# Long enough for the migrator and supervisord to start, far shorter than a retry loop.
FAST_S = 25.0


@pytest.mark.parametrize(
    ("size", "mode", "expected"),
    [
        pytest.param(32, 0o644, "fix: chmod 600", id="group-readable"),
        pytest.param(31, 0o600, "holds 31 bytes, not 32", id="wrong-size"),
    ],
)
def test_bad_key_file_ends_up_with_keyds_message_and_exit_2(
    stacks: Stacks, size: int, mode: int, expected: str
):
    """keyd refuses the key file: `danube up` exits 2 with keyd's message, naming the file."""
    home, _port = stacks.home()
    keys = home / "keys"
    keys.mkdir(mode=0o700)
    key_path = keys / "encryption.key"
    key_path.write_bytes(os.urandom(size))
    key_path.chmod(mode)

    started = time.monotonic()
    up = stacks.up(home)
    code = up.wait(FAST_S)
    elapsed = time.monotonic() - started

    assert code == 2, up.describe()
    assert elapsed < FAST_S
    assert "keyd refused its config or key while starting" in up.stderr.text, up.describe()
    assert expected in up.stderr.text, up.describe()
    assert str(key_path) in up.stderr.text
    assert "Danube is ready" not in up.stdout.text
    assert processes_of(home) == []
    assert len(key_path.read_bytes()) == size  # the refused key is left alone


def test_bad_config_ends_up_naming_the_key_and_exit_2(stacks: Stacks):
    """A typo in danube.toml: exit 2 at once, naming the file and the unknown key."""
    home, _port = stacks.home()
    config = home / "danube.toml"
    config.write_text(config.read_text().replace('level = "info"', 'levl = "info"', 1))

    started = time.monotonic()
    up = stacks.up(home)
    code = up.wait(FAST_S)

    assert code == 2, up.describe()
    assert time.monotonic() - started < FAST_S
    assert f"{config}" in up.stderr.text, up.describe()
    assert "levl" in up.stderr.text, up.describe()
    assert processes_of(home) == []
    assert not (home / "keys").exists()  # nothing was made for a config that was refused


def test_home_whose_socket_path_cannot_fit_is_refused_before_anything_is_made(stacks: Stacks):
    """A DIR too long for keyd's worker socket path (107 bytes): exit 2, say so, create nothing."""
    base = new_home()
    stacks.homes.append(base)
    home = base / ("d" * (107 - len(str(base))))
    up = stacks.up(home, cwd=base)
    assert up.wait(FAST_S) == 2, up.describe()
    assert "longer than the 107 bytes a Unix socket path allows" in up.stderr.text
    assert not home.exists()


def test_missing_key_beside_an_existing_database_is_not_silently_replaced(stacks: Stacks):
    """The key is gone but the database is there: a lost key, not a first run. `danube up`
    exits 2 saying to restore it, and writes no new key (that would orphan every secret)."""
    home, _port = stacks.home()
    (home / "data").mkdir(mode=0o700)
    (home / "data" / "danube.db").write_bytes(b"")

    up = stacks.up(home)
    assert up.wait(FAST_S) == 2, up.describe()
    assert "restore the key from your backup" in up.stderr.text, up.describe()
    assert not (home / "keys" / "encryption.key").exists()
    assert processes_of(home) == []


def test_api_that_cannot_listen_ends_up_with_its_message_and_exit_1(stacks: Stacks):
    """The API's port is taken (by a listener that never answers): the API exits 1 and
    `danube up` stops at its first exit, with uvicorn's message, exit 1."""
    home, port = stacks.home()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        started = time.monotonic()
        up = stacks.up(home)
        code = up.wait(FAST_S)
    assert code == 1, up.describe()
    assert time.monotonic() - started < FAST_S
    assert "api failed while starting (exit status 1)" in up.stderr.text, up.describe()
    assert "address already in use" in up.stderr.text, up.describe()
    assert processes_of(home) == []


def test_a_migrator_that_fails_ends_up_naming_its_log_and_exit_1(stacks: Stacks):
    """supervisord runs the migrator beside keyd and the API; when it fails (the database
    file is not SQLite), `danube up` exits 1 with the migrator's words and its log's path,
    never says ready, and leaves no process behind."""
    home, _port = stacks.home()
    write_new_key(home / "keys" / "encryption.key")
    (home / "data").mkdir(mode=0o700)
    (home / "data" / "danube.db").write_bytes(b"this is not a database" * 100)

    up = stacks.up(home)
    code = up.wait(FAST_S)

    assert code == 1, up.describe()
    assert "the migrator failed with exit code 1" in up.stderr.text, up.describe()
    assert str(home / "log" / "migrator.log") in up.stderr.text, up.describe()
    assert "danube-migrate: " in up.stderr.text, up.describe()  # its own last error
    assert "Danube is ready" not in up.stdout.text
    assert processes_of(home) == []
