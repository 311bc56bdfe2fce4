"""Alembic, configured from code: the migration scripts ship inside this package, so no
`alembic.ini` is needed at run time.

`env.py` takes what it runs on from the config's attributes: a SQLAlchemy `Connection`
outside any transaction (`CONNECTION`), else the `DatabaseSettings` of a database to open
(`DATABASE`). `TARGET_METADATA` replaces the models' metadata, for tests of the drift check.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from alembic.script import ScriptDirectory
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from danube_shared.config import DatabaseSettings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
CONNECTION = "connection"
DATABASE = "danube_database"
TARGET_METADATA = "danube_target_metadata"
# The PostgreSQL advisory lock env.py takes around a migration: any constant that no other
# application on the server uses.
MIGRATION_LOCK_KEY = 0x44616E75  # "Danu"


def alembic_config(
    *,
    connection: Connection | None = None,
    database: DatabaseSettings | None = None,
    target_metadata: MetaData | None = None,
) -> Config:
    """An Alembic config for Danube's migrations, run on `connection` or on `database`."""
    # Imported here: the migrator needs it only to run migrations, not to create an empty
    # database at head or to find it already there.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes[CONNECTION] = connection
    if database is not None:
        config.attributes[DATABASE] = database
    if target_metadata is not None:
        config.attributes[TARGET_METADATA] = target_metadata
    return config


@functools.cache
def script_directory() -> ScriptDirectory:
    """Danube's migration scripts, read once per process."""
    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str:
    """The revision the migrations end at."""
    head = script_directory().get_current_head()
    if head is None:
        raise RuntimeError(f"no migration found in {MIGRATIONS_DIR}")
    return head
