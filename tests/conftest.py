"""Fixtures every suite shares: a real SQLite database made by the real migrations.

The migrations run once per test run, into a template file (`migrated_template`); each
test gets its own copy of it (`migrated_db_path`, `database_settings`) and, if it asks,
a `Database` opened on that copy and disposed afterwards (`database`).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from danube_migrator.runner import migrate
from danube_shared.config import DatabaseSettings
from danube_shared.db.engine import Database
from tests.support.postgres import (
    ON_POSTGRESQL,
    TEST_DATABASE_URL_VARIABLE,
    reaches_the_test_database,
)


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file at the migration head, made once per test run. Do not write to it."""
    path = tmp_path_factory.mktemp("template") / "danube.db"
    asyncio.run(migrate(DatabaseSettings(path=path)))
    # The migrator's last connection closed, which checkpointed the WAL into the file:
    # the file alone is the whole database, ready to copy.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture
def migrated_db_path(migrated_template: Path, tmp_path: Path) -> Path:
    """This test's own copy of the migrated template."""
    path = tmp_path / "danube.db"
    shutil.copyfile(migrated_template, path)
    return path


@pytest.fixture
def database_settings(migrated_db_path: Path) -> DatabaseSettings:
    return DatabaseSettings(path=migrated_db_path)


@pytest.fixture
async def database(database_settings: DatabaseSettings) -> AsyncIterator[Database]:
    """A `Database` on this test's migrated copy, disposed after the test."""
    db = Database.open(database_settings)
    try:
        yield db
    finally:
        await db.dispose()


ONLY_DATABASE_TESTS = "--only-database-tests"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        ONLY_DATABASE_TESTS,
        action="store_true",
        help="with DANUBE_TEST_DATABASE_URL set, deselect the tests that reach no test "
        "database (they ran the same on SQLite): CI's second, PostgreSQL run",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption(ONLY_DATABASE_TESTS):
        return
    if not ON_POSTGRESQL:
        raise pytest.UsageError(f"{ONLY_DATABASE_TESTS} needs {TEST_DATABASE_URL_VARIABLE}")
    kept: list[pytest.Item] = []
    same_on_both: list[pytest.Item] = []
    for item in items:
        (kept if reaches_the_test_database(item) else same_on_both).append(item)
    if same_on_both:
        config.hook.pytest_deselected(items=same_on_both)
        items[:] = kept
