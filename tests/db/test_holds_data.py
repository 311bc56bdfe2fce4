"""`holds_data`: whether a database already holds Danube's users or secrets, which
`danube up` asks before it writes a new key for a home on a shared database (DESIGN 15)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.repositories import SecretRepository, SecretScope, UserRepository
from danube_shared.db.schema import Pipeline
from danube_shared.db.schema_head import holds_data


async def test_a_migrated_database_without_rows_holds_no_data(database: Database):
    assert await holds_data(database.engine) is False


async def test_a_database_with_a_user_holds_data(database: Database):
    await database.write(
        lambda session: UserRepository(session).create(username="ada", display_name="Ada")
    )
    assert await holds_data(database.engine) is True


async def test_a_database_with_a_secret_and_no_user_holds_data(
    database: Database, pipeline: Pipeline
):
    def store(session: Session) -> None:
        SecretRepository(session).upsert(
            SecretScope.for_team(pipeline.team_id),
            "DEPLOY_KEY",
            secret_id=new_id(),
            ciphertext=b"\x01\x00\x00\x00\x01sealed",
            key_id=b"\x00\x00\x00\x01",
        )

    await database.write(store)
    assert await holds_data(database.engine) is True


async def test_a_database_without_a_schema_holds_no_data(tmp_path: Path):
    empty = Database.open(DatabaseSettings(path=tmp_path / "empty.db"), create=True)
    try:
        assert await holds_data(empty.engine) is False
    finally:
        await empty.dispose()
