"""The PostgreSQL the database tests run on when `DANUBE_TEST_DATABASE_URL` is set.

DESIGN 15: the suite runs on both engines. CI starts a throwaway server with
`.ci/postgres start DIR` and sets the variable to the URL it prints
(`postgresql+asyncpg://postgres@/danube?host=DIR`); unset, the tests use SQLite files.

On PostgreSQL the migrations run once per test run into a template database
(`create_template`); each test module gets a fresh copy of it (`CREATE DATABASE ...
TEMPLATE ...`, `copy_of_template`), dropped afterwards, and each test starts on empty
tables (`empty_tables`, after the test before it). A copy costs most of a second, an
emptying a few milliseconds. The URL's own database is only the maintenance connection
these statements run on.

Tests that check what only one engine has (WAL, PRAGMAs, the writer thread, files and
their permissions; or PostgreSQL's isolation levels and SQLSTATEs) carry `sqlite_only` or
`postgresql_only`, which skip them on the other engine with the reason.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from danube_migrator.runner import migrate
from danube_shared.config import DatabaseSettings
from danube_shared.db.schema import Base

TEST_DATABASE_URL_VARIABLE = "DANUBE_TEST_DATABASE_URL"


def postgresql_test_url() -> str:
    """The server's URL from the environment, or "" for SQLite."""
    return os.environ.get(TEST_DATABASE_URL_VARIABLE, "")


# Read once, when the test modules are collected: skip marks need it then.
ON_POSTGRESQL = bool(postgresql_test_url())


def sqlite_only(reason: str) -> pytest.MarkDecorator:
    """Skip on PostgreSQL: the test checks something only SQLite has (`reason`)."""
    return pytest.mark.skipif(ON_POSTGRESQL, reason=f"SQLite only: {reason}")


def postgresql_only(reason: str) -> pytest.MarkDecorator:
    """Skip on SQLite: the test checks something only PostgreSQL has (`reason`)."""
    return pytest.mark.skipif(
        not ON_POSTGRESQL, reason=f"PostgreSQL only ({TEST_DATABASE_URL_VARIABLE} unset): {reason}"
    )


def url_of_database(url: str, name: str) -> str:
    """`url` naming database `name` on the same server (with the same socket and user)."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def new_database_name(prefix: str) -> str:
    # Lower case letters, digits and underscores: safe to put in SQL unquoted.
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def run_maintenance(url: str, *statements: str) -> None:
    """Run statements outside any transaction (CREATE and DROP DATABASE need that) on the
    maintenance database of `url`."""

    async def run() -> None:
        engine = create_async_engine(
            make_url(url), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with engine.connect() as connection:
                for statement in statements:
                    await connection.exec_driver_sql(statement)
        finally:
            await engine.dispose()

    asyncio.run(run())


def create_empty_database(url: str) -> str:
    """A new empty database on the server of `url`; returns its URL."""
    name = new_database_name("danube_empty")
    run_maintenance(url, f"CREATE DATABASE {name}")
    return url_of_database(url, name)


def create_template(url: str) -> str:
    """A database at the migration head, made by the real migrations; returns its name.
    Nothing may stay connected to it: copies of a template need it idle."""
    name = new_database_name("danube_template")
    run_maintenance(url, f"CREATE DATABASE {name}")
    asyncio.run(migrate(DatabaseSettings(url=url_of_database(url, name))))
    return name


def copy_of_template(url: str, template: str) -> str:
    """A fresh database copied from `template`; returns its URL."""
    name = new_database_name("danube_test")
    run_maintenance(url, f"CREATE DATABASE {name} TEMPLATE {template}")
    return url_of_database(url, name)


def drop_database(url: str, database_url: str) -> None:
    """Drop the database `database_url` names, closing any connection still on it."""
    name = make_url(database_url).database
    run_maintenance(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def empty_tables(database_url: str) -> None:
    """Delete every row of Danube's tables (not Alembic's) in the database of the URL."""
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    # Fails rather than waits if a test left a transaction holding a lock.
    run_maintenance(
        database_url, "SET lock_timeout = '10s'", f"TRUNCATE {tables} RESTART IDENTITY CASCADE"
    )


# The fixtures through which a test reaches the test database: on PostgreSQL, a test that
# requests none of them (directly or through another fixture) runs exactly as on SQLite.
DATABASE_FIXTURES = frozenset(
    {
        "database_settings",
        "postgresql_template",
        "postgresql_module_database",
        "postgresql_empty_url",
        "postgresql_migrated_url",
    }
)


def reaches_the_test_database(item: pytest.Item) -> bool:
    """Whether the test requests one of `DATABASE_FIXTURES`, directly or not."""
    fixture_names: list[str] = getattr(item, "fixturenames", [])
    return not DATABASE_FIXTURES.isdisjoint(fixture_names)


@pytest.fixture(scope="session")
def postgresql_template() -> Iterator[str]:
    """On PostgreSQL: the name of a database at the migration head, made once per run
    (a conftest imports this fixture to offer it)."""
    url = postgresql_test_url()
    template = create_template(url)
    yield template
    drop_database(url, url_of_database(url, template))


@pytest.fixture(scope="module")
def postgresql_module_database(postgresql_template: str) -> Iterator[str]:
    """On PostgreSQL: this test module's copy of the template; its URL (a conftest imports
    this fixture, with `postgresql_template`, to offer it)."""
    url = postgresql_test_url()
    own = copy_of_template(url, postgresql_template)
    yield own
    drop_database(url, own)
