"""The databases migrator tests run on: on PostgreSQL when `DANUBE_TEST_DATABASE_URL` is
set (see `tests/support/postgres.py`), a fresh one per test, since migrator tests change
the schema; else the SQLite files of `tests/conftest.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from danube_shared.config import DatabaseSettings
from tests.support.postgres import (
    copy_of_template,
    create_empty_database,
    drop_database,
    postgresql_template,  # noqa: F401 -- a fixture, offered to this directory
    postgresql_test_url,
)


@pytest.fixture
def postgresql_empty_url() -> Iterator[str]:
    """On PostgreSQL: the URL of a new empty database, dropped after the test."""
    url = postgresql_test_url()
    own = create_empty_database(url)
    yield own
    drop_database(url, own)


@pytest.fixture
def postgresql_migrated_url(postgresql_template: str) -> Iterator[str]:  # noqa: F811 -- the imported fixture, requested
    """On PostgreSQL: the URL of a fresh database at the migration head, dropped after."""
    url = postgresql_test_url()
    own = copy_of_template(url, postgresql_template)
    yield own
    drop_database(url, own)


@pytest.fixture
def database_settings(request: pytest.FixtureRequest, migrated_db_path: Path) -> DatabaseSettings:
    """This test's own migrated database, on the engine the run tests."""
    if not postgresql_test_url():
        return DatabaseSettings(path=migrated_db_path)
    return DatabaseSettings(url=request.getfixturevalue("postgresql_migrated_url"))
