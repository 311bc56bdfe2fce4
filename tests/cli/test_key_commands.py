"""`danube key rotate | rewrap | retire | status` and `danube audit verify`, run as the
real command against a real keyd and a real migrated SQLite database."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.schema import Secret, Team
from danube_shared.db.timestamps import utcnow
from danube_shared.keyd_control_client import KeydControlClient
from danube_shared.keyd_protocol import key_id_for, token_sha256
from danube_shared.keyd_worker_client import fetch_job_secrets
from tests.support.isolation import program_environment
from tests.support.keyd import KeydHome, KeydProcess, kill_every, make_home, spawn, wait_ready

DANUBE = Path(sys.executable).with_name("danube")
SECRETS = 60
HANG_GUARD_S = 120.0
TOKEN = "tok-cli"  # noqa: S105 -- a job token made up for the test


@dataclass
class Stack:
    home: KeydHome
    database_path: Path
    keyd: KeydProcess


@pytest.fixture
def stack(migrated_template: Path) -> Iterator[Stack]:
    """A keyd home whose config also names a migrated database, and keyd running there."""
    home = make_home()
    database_path = home.root / "data" / "danube.db"
    database_path.parent.mkdir(mode=0o700)
    shutil.copyfile(migrated_template, database_path)
    home.write_config(database_path=database_path)
    started: list[KeydProcess] = []
    try:
        keyd = spawn(home)
        started.append(keyd)
        wait_ready(keyd)
        yield Stack(home, database_path, keyd)
    finally:
        kill_every(started)
        shutil.rmtree(home.root, ignore_errors=True)


def danube(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DANUBE), *args, "--config", str(stack.home.config_path)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=HANG_GUARD_S,
        check=False,
    )


async def _store_secrets(stack: Stack, values: dict[str, bytes]) -> None:
    """Encrypt each value through keyd (context secret:<id>) and store the rows."""
    client = KeydControlClient(stack.home.settings.keyd)
    database = Database.open(stack.home.settings.database)
    try:
        ciphertexts = await client.encrypt([(v, f"secret:{i}") for i, v in values.items()])

        def insert(session: Session) -> None:
            team = Team(id=new_id(), name="team", created_at=utcnow())
            session.add(team)
            session.flush()
            for (secret_id, _), ciphertext in zip(values.items(), ciphertexts, strict=True):
                session.add(
                    Secret(
                        id=secret_id,
                        team_id=team.id,
                        name=f"S_{secret_id[-12:]}",
                        ciphertext=ciphertext,
                        key_id=ciphertext[1:5],
                        created_at=utcnow(),
                        updated_at=utcnow(),
                    )
                )

        await database.write(insert)
    finally:
        await client.close()
        await database.dispose()


def _rows(session: Session) -> dict[str, tuple[bytes, bytes]]:
    return {
        row.id: (row.ciphertext, row.key_id)
        for row in session.execute(select(Secret.id, Secret.ciphertext, Secret.key_id))
    }


def _count_under(session: Session, key_id: bytes) -> int:
    return session.scalar(select(func.count()).where(Secret.key_id == key_id)) or 0


async def _stored(stack: Stack) -> dict[str, tuple[bytes, bytes]]:
    database = Database.open(stack.home.settings.database)
    try:
        return await database.read(_rows)
    finally:
        await database.dispose()


async def _under(stack: Stack, key_id: bytes) -> int:
    database = Database.open(stack.home.settings.database)
    try:
        return await database.read(_count_under, key_id)
    finally:
        await database.dispose()


def stored(stack: Stack) -> dict[str, tuple[bytes, bytes]]:
    """Every stored secret's (ciphertext, key id), by id."""
    return asyncio.run(_stored(stack))


def under(stack: Stack, key_id: bytes) -> int:
    """How many stored secrets `key_id` sealed."""
    return asyncio.run(_under(stack, key_id))


def readable(stack: Stack, values: dict[str, bytes], job_id: str) -> None:
    """Every stored secret opens through keyd (job_load, then job_secrets) to its value."""

    secrets = [
        (secret_id, ciphertext, f"secret:{secret_id}")
        for secret_id, (ciphertext, _) in stored(stack).items()
    ]

    async def load() -> None:
        client = KeydControlClient(stack.home.settings.keyd)
        try:
            assert await client.job_load(job_id, token_sha256(TOKEN), 60, secrets) == len(values)
        finally:
            await client.close()

    asyncio.run(load())
    got = fetch_job_secrets(stack.home.socket_dir, job_id, TOKEN, timeout_ms=5000)
    assert got == values


def active_key_id(stack: Stack) -> bytes:
    return key_id_for(stack.home.key_path.read_bytes())


def test_rotation_end_to_end_with_a_killed_rewrap(stack: Stack) -> None:
    """rotate prints old and new ids and keyd encrypts under the new one; a rewrap killed
    with SIGKILL mid-run leaves every secret readable, part of them moved; retire is
    refused (exit 1, naming how many) while the old key is in use; a second rewrap
    finishes; then retire deletes the old key. Secrets are readable at every step."""
    values = {new_id(): os.urandom(24) for _ in range(SECRETS)}
    asyncio.run(_store_secrets(stack, values))
    old_id = active_key_id(stack)
    readable(stack, values, "before")

    rotated = danube(stack, "key", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_id_ = active_key_id(stack)
    assert rotated.stdout.splitlines() == [f"old key {old_id.hex()}", f"new key {new_id_.hex()}"]
    assert (stack.home.key_path.parent / f"encryption.key.{old_id.hex()}").exists()
    readable(stack, values, "after-rotate")

    rewrap = subprocess.Popen(
        [
            str(DANUBE),
            "key",
            "rewrap",
            "--batch-size",
            "7",
            "--pause-ms",
            "100",
            "--config",
            str(stack.home.config_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=program_environment(),
    )
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while under(stack, new_id_) == 0:
            assert rewrap.poll() is None, "rewrap ended before its first batch was seen"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(rewrap.pid, signal.SIGKILL)
    finally:
        if rewrap.poll() is None:
            os.kill(rewrap.pid, signal.SIGKILL)
        rewrap.wait(timeout=HANG_GUARD_S)
    moved = under(stack, new_id_)
    assert 0 < moved < SECRETS
    assert moved + under(stack, old_id) == SECRETS
    readable(stack, values, "during")

    refused = danube(stack, "key", "retire", old_id.hex())
    assert refused.returncode == 1
    assert f"{SECRETS - moved} stored secrets still use key {old_id.hex()}" in refused.stderr

    # Killed again at an arbitrary moment, with no pause between batches: within a batch
    # as likely as between two.
    again = subprocess.Popen(
        [
            str(DANUBE),
            "key",
            "rewrap",
            "--batch-size",
            "3",
            "--config",
            str(stack.home.config_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=program_environment(),
    )
    try:
        time.sleep(random.uniform(0.5, 1.5))  # noqa: S311 -- a moment, not a secret
    finally:
        if again.poll() is None:
            os.kill(again.pid, signal.SIGKILL)
        again.wait(timeout=HANG_GUARD_S)
    assert under(stack, new_id_) + under(stack, old_id) == SECRETS
    readable(stack, values, "after-second-kill")

    finished = danube(stack, "key", "rewrap", "--batch-size", "7")
    assert finished.returncode == 0, finished.stderr
    assert under(stack, new_id_) == SECRETS
    assert {key_id for _, key_id in stored(stack).values()} == {new_id_}
    readable(stack, values, "after-rewrap")

    status = danube(stack, "key", "status")
    assert status.returncode == 0, status.stderr
    assert f"active key: {new_id_.hex()}" in status.stdout
    assert f"  {new_id_.hex()}  {SECRETS}" in status.stdout
    assert f"  {old_id.hex()}  0" in status.stdout

    retired = danube(stack, "key", "retire", old_id.hex())
    assert retired.returncode == 0, retired.stderr
    assert not (stack.home.key_path.parent / f"encryption.key.{old_id.hex()}").exists()
    status = danube(stack, "key", "status")
    assert f"loaded keys: {new_id_.hex()}\n" in status.stdout
    readable(stack, values, "after-retire")


def test_retiring_the_active_key_is_refused(stack: Stack) -> None:
    """The active key cannot be retired, even with no secret under it: exit 1."""
    refused = danube(stack, "key", "retire", active_key_id(stack).hex())
    assert refused.returncode == 1
    assert "is the active key" in refused.stderr
    assert stack.home.key_path.exists()


def test_a_malformed_key_id_is_a_usage_error(stack: Stack) -> None:
    """retire of something that is not 8 hex digits: exit 2."""
    assert danube(stack, "key", "retire", "nothex!").returncode == 2


def test_audit_verify_detects_tampering(stack: Stack) -> None:
    """danube audit verify: exit 0 on the untouched chain; after one line is edited,
    exit 1 naming that line."""
    values = {new_id(): b"v" for _ in range(3)}
    asyncio.run(_store_secrets(stack, values))
    readable(stack, values, "job-a")
    readable(stack, values, "job-b")
    intact = danube(stack, "audit", "verify")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "audit chain intact: 4 records" in intact.stdout
    lines = stack.home.audit_path.read_text().splitlines()
    lines[2] = lines[2].replace('"job_id":"job-b"', '"job_id":"job-c"')
    stack.home.audit_path.write_text("\n".join(lines) + "\n")
    broken = danube(stack, "audit", "verify")
    assert broken.returncode == 1
    assert "BROKEN at line 3" in broken.stdout


def test_key_status_warns_past_half_the_limit(stack: Stack) -> None:
    """With the active key's count seeded past 2**31 (keyd restarted to read it), key
    status prints the count and warns to rotate."""
    key_id = active_key_id(stack)
    count_file = stack.home.key_path.with_name(f"encryption.key.{key_id.hex()}.count")
    stack.keyd.stop()
    count_file.write_text(f"{2**31 + 5}\n")
    count_file.chmod(0o600)
    keyd = spawn(stack.home)
    try:
        wait_ready(keyd)
        status = danube(stack, "key", "status")
    finally:
        kill_every([keyd])
    assert status.returncode == 0, status.stderr
    assert f"active key encryptions: {2**31 + 5} of {2**32}" in status.stdout
    assert "past half" in status.stderr


@pytest.mark.parametrize(
    ("count", "warned"), [(0, False), (2**31, False), (2**31 + 1, True), (2**32, True)]
)
def test_the_encryption_warning_starts_past_half_the_limit(count: int, warned: bool) -> None:
    """`danube status` and `danube key status` warn once the active key's count is past
    half its limit, not at half."""
    from danube_cli.key_commands import encryption_warning

    stats = {"key_id": "0a0b0c0d", "encryptions": {"0a0b0c0d": count}, "encryption_limit": 2**32}
    assert (encryption_warning(stats) is not None) is warned
