"""The schema revisions `danube_shared.db.schema_head` names are Alembic's: the API checks
the database against them without importing the migrator."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from danube_migrator.alembic_setup import MIGRATIONS_DIR, head_revision
from danube_shared.db.schema_head import SCHEMA_HEAD, SCHEMA_REVISIONS


def test_the_schema_head_constant_is_alembics_head():
    assert head_revision() == SCHEMA_HEAD


def test_the_known_revisions_are_alembics_history_oldest_first():
    scripts = ScriptDirectory(str(MIGRATIONS_DIR))
    history = [script.revision for script in scripts.walk_revisions()]
    assert tuple(reversed(history)) == SCHEMA_REVISIONS
