"""The schema's revisions, oldest first, and the head: constants, so that knowing them
imports neither Alembic nor SQLAlchemy (the migrator's first run, `head_schema`, needs
only these). `tests/migrator` checks that they equal Alembic's history: a new migration
must be added here too, and the migrator's `head_schema.sql` rendered again
(`uv run python -m danube_migrator.render_head_schema`)."""

from __future__ import annotations

from typing import Final

# Every migration's revision id, oldest first.
SCHEMA_REVISIONS: Final[tuple[str, ...]] = ("0001", "0002")
SCHEMA_HEAD: Final = SCHEMA_REVISIONS[-1]
