"""`danube user create` and `danube token create`, run as the operator runs them, on a
migrated database: the printed token is the only output and it authenticates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.repositories import TokenRepository
from danube_shared.db.timestamps import utcnow
from danube_shared.tokens import TokenKind, kind_of, token_sha256
from tests.support.isolation import program_environment

DANUBE = Path(sys.executable).with_name("danube")


def danube(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DANUBE), "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=60,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path, migrated_db_path: Path) -> Path:
    path = tmp_path / "danube.toml"
    path.write_text(f'[database]\npath = "{migrated_db_path}"\n')
    return path


async def is_active(settings: DatabaseSettings, token: str) -> bool:
    database = Database.open(settings)
    try:
        found = await database.read(
            lambda session: TokenRepository(session).find_active(token_sha256(token), now=utcnow())
        )
        return found is not None and found.user is not None
    finally:
        await database.dispose()


async def test_user_create_prints_one_working_token_and_refuses_a_taken_name(
    config: Path, database_settings: DatabaseSettings
):
    made = danube(config, "user", "create", "ada", "--admin")
    assert made.returncode == 0, made.stderr
    (token,) = made.stdout.splitlines()
    assert kind_of(token) is TokenKind.USER
    assert await is_active(database_settings, token)
    again = danube(config, "user", "create", "ada")
    assert again.returncode == 1
    assert again.stdout == ""
    assert "ada" in again.stderr


async def test_token_create_issues_a_new_token_for_an_existing_user_only(
    config: Path, database_settings: DatabaseSettings
):
    assert danube(config, "user", "create", "bob").returncode == 0
    issued = danube(config, "token", "create", "bob")
    assert issued.returncode == 0, issued.stderr
    assert await is_active(database_settings, issued.stdout.strip())
    missing = danube(config, "token", "create", "nobody")
    assert missing.returncode == 1
    assert missing.stdout == ""
