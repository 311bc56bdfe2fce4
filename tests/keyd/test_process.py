"""The `danube-keyd` process: start-up refusals and their exit codes, the socket
directory and its lock, clean stops on signals, hardening, and what it logs."""

# ruff: noqa: S105 -- job tokens here are test data, not credentials

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.isolation import program_environment
from tests.support.keyd import KEYD, KeydHome, KeydProcess, RawPeer


def run_once(home: KeydHome, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """Run keyd expecting it to exit on its own (it is killed if it outlives `timeout`)."""
    return subprocess.run(
        [str(KEYD), "--config", str(home.config_path)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=timeout,
        check=False,
    )


def test_sockets_are_0660_in_a_0750_directory(keyd: KeydProcess) -> None:
    """keyd creates socket_dir 0750 and both sockets 0660."""
    assert stat.S_IMODE(keyd.home.socket_dir.stat().st_mode) == 0o750
    for path in (keyd.home.control_path, keyd.home.worker_path):
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_uid == os.geteuid()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_keyd_cleanly(
    keyd: KeydProcess, start_keyd: Callable[..., KeydProcess], signum: int
) -> None:
    """SIGTERM or SIGINT: exit 0, socket files removed, lock released (a new keyd starts)."""
    assert keyd.stop(signum) == 0
    assert not keyd.home.control_path.exists()
    assert not keyd.home.worker_path.exists()
    assert '"keyd stopped"' in keyd.home.log_text()
    start_keyd(keyd.home)  # the lock is free again


def _break_missing(home: KeydHome) -> str:
    home.key_path.unlink()
    return "danube keygen"


def _break_size(home: KeydHome) -> str:
    home.key_path.write_bytes(b"short")
    return "restore it from your backup"


def _break_symlink(home: KeydHome) -> str:
    target = home.key_path.with_name("target.key")
    home.key_path.rename(target)
    home.key_path.symlink_to(target)
    return "symlink"


def _break_mode(home: KeydHome) -> str:
    home.key_path.chmod(0o640)
    return f"chmod 600 {home.key_path}"


def _break_directory(home: KeydHome) -> str:
    home.key_path.parent.chmod(0o777)
    return f"chmod go-w {home.key_path.parent}"


def _break_owner(home: KeydHome) -> str:
    os.chown(home.key_path, 65534, -1)
    return f"chown {os.geteuid()} {home.key_path}"


@pytest.mark.parametrize(
    "break_key",
    [_break_missing, _break_size, _break_symlink, _break_mode, _break_directory]
    + ([_break_owner] if os.geteuid() == 0 else []),
    ids=lambda f: f.__name__.removeprefix("_break_"),
)
def test_a_refused_key_file_exits_2_with_one_line_naming_path_and_fix(
    keyd_home: KeydHome, break_key: Callable[[KeydHome], str]
) -> None:
    """keyd exits 2 promptly with one stderr line, a JSON log line like every other
    (DESIGN section 8), naming the key path and the fix, and binds nothing."""
    fix = break_key(keyd_home)
    result = run_once(keyd_home)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    refusal = json.loads(lines[0])
    assert (refusal["level"], refusal["process"]) == ("error", "danube-keyd")
    assert refusal["message"].startswith("refused to start: ")
    assert str(keyd_home.key_path.parent) in refusal["message"]
    assert fix in refusal["message"]
    assert not keyd_home.control_path.exists()


def test_an_invalid_config_exits_2(keyd_home: KeydHome) -> None:
    """An unknown config key: exit 2, naming the key."""
    keyd_home.config_path.write_text(keyd_home.config_path.read_text() + "cache_ttl = 5\n")
    result = run_once(keyd_home)
    assert result.returncode == 2
    assert "cache_ttl" in result.stderr


def test_a_group_writable_socket_dir_exits_2(keyd_home: KeydHome) -> None:
    """keyd refuses a socket_dir others could write to (they could swap the sockets)."""
    keyd_home.socket_dir.mkdir(mode=0o770)
    keyd_home.socket_dir.chmod(0o770)
    result = run_once(keyd_home)
    assert result.returncode == 2
    assert f"chmod 750 {keyd_home.socket_dir}" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown to another uid")
def test_a_socket_dir_owned_by_another_uid_exits_2(keyd_home: KeydHome) -> None:
    """socket_dir must be keyd's own: clients trust sockets owned by its owner."""
    keyd_home.socket_dir.mkdir(mode=0o750)
    os.chown(keyd_home.socket_dir, 65534, -1)
    result = run_once(keyd_home)
    assert result.returncode == 2
    assert f"chown {os.geteuid()} {keyd_home.socket_dir}" in result.stderr


def test_a_second_keyd_is_refused_and_the_first_keeps_serving(keyd: KeydProcess) -> None:
    """A second keyd on the same socket_dir exits 1 naming the lock and the first's pid;
    the first keeps its socket files and answers."""
    before = keyd.home.control_path.stat().st_ino
    result = run_once(keyd.home)
    assert result.returncode == 1
    assert json.loads(result.stderr.strip().splitlines()[-1])["level"] == "error"
    assert "another keyd" in result.stderr
    assert f"pid {keyd.pid}" in result.stderr
    assert str(keyd.home.socket_dir / "keyd.lock") in result.stderr
    assert keyd.home.control_path.stat().st_ino == before
    with RawPeer(keyd.home.control_path) as peer:
        assert peer.ask({"v": 1, "id": 1, "op": "ping"}) is not None


def test_keyd_restarts_after_kill_9_over_its_stale_files(
    keyd: KeydProcess, start_keyd: Callable[..., KeydProcess]
) -> None:
    """After SIGKILL the socket and lock files stay behind; a new keyd starts anyway."""
    keyd.kill()
    assert keyd.home.control_path.exists()
    start_keyd(keyd.home)


def test_core_dumps_are_disabled(keyd: KeydProcess) -> None:
    """The running keyd has RLIMIT_CORE 0 (soft and hard)."""
    limits = Path(f"/proc/{keyd.pid}/limits").read_text().splitlines()
    core = next(line for line in limits if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]


def test_hardening_makes_the_process_non_dumpable() -> None:
    """disable_core_dumps() clears PR_SET_DUMPABLE (checked in a child process)."""
    script = textwrap.dedent(
        """
        from danube_keyd.hardening import disable_core_dumps, is_dumpable
        assert is_dumpable() is True
        assert disable_core_dumps() == []
        print(is_dumpable())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "False"


def test_expired_jobs_are_reaped_without_anyone_asking(keyd: KeydProcess) -> None:
    """A job with ttl_s 1 is gone from the cache after its TTL although nobody asked for
    it (`stats` only reads the count), and keyd logs the expiry."""
    with RawPeer(keyd.home.control_path) as peer:
        reply = peer.ask(
            {
                "v": 1,
                "id": 1,
                "op": "job_load",
                "job_id": "j",
                "token_sha256": bytes(32),
                "ttl_s": 1,
                "secrets": [],
            }
        )
        assert reply == {"v": 1, "id": 1, "ok": True, "loaded": 0}
        stats = peer.ask({"v": 1, "id": 2, "op": "stats"})
        assert stats is not None
        assert stats["jobs_cached"] == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = peer.ask({"v": 1, "id": 3, "op": "stats"})
            assert stats is not None
            if stats["jobs_cached"] == 0:
                break
            time.sleep(0.1)
    assert stats["jobs_cached"] == 0
    assert '"jobs expired"' in keyd.home.log_text()


def test_logs_are_json_events_without_plaintexts_or_tokens(keyd: KeydProcess) -> None:
    """At debug level, after every op, no log line holds a plaintext, a token, a
    ciphertext or key material; every line is one JSON object."""
    import hashlib

    plaintext = b"PLAINTEXT-canary-7f3e"
    token = "TOKEN-canary-91ab"
    with RawPeer(keyd.home.control_path) as control, RawPeer(keyd.home.worker_path) as worker:
        sealed = control.ask(
            {
                "v": 1,
                "id": 1,
                "op": "encrypt",
                "items": [{"plaintext": plaintext, "context": "secret:c"}],
            }
        )
        assert sealed is not None
        ciphertext = sealed["items"][0]
        control.ask(
            {
                "v": 1,
                "id": 2,
                "op": "rewrap",
                "items": [{"ciphertext": ciphertext, "context": "secret:c"}],
            }
        )
        control.ask(
            {
                "v": 1,
                "id": 3,
                "op": "job_load",
                "job_id": "job-canary",
                "token_sha256": hashlib.sha256(token.encode()).digest(),
                "ttl_s": 60,
                "secrets": [{"name": "NAME", "ciphertext": ciphertext, "context": "secret:c"}],
            }
        )
        worker.ask({"v": 1, "id": 4, "op": "job_secrets", "job_id": "job-canary", "token": token})
        worker.ask(
            {"v": 1, "id": 5, "op": "job_secrets", "job_id": "job-canary", "token": token + "x"}
        )
        control.ask(
            {
                "v": 1,
                "id": 6,
                "op": "rewrap",
                "items": [{"ciphertext": ciphertext, "context": "secret:x"}],
            }
        )
    keyd.stop()
    text = keyd.home.log_text()
    key = keyd.home.key_path.read_bytes()
    for needle in (plaintext.decode(), token, ciphertext.hex(), key.hex(), str(list(key))):
        assert needle not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"job loaded", "job secrets fetched", "job token mismatch"} <= {
        line["message"] for line in lines
    }
    assert all(line["process"] == "danube-keyd" for line in lines)
