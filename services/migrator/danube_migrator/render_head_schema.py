"""`uv run python -m danube_migrator.render_head_schema`: write `head_schema.sql` from
the models, after a change to them (and its migration). `tests/migrator` fails, naming
this command, while the file and the models differ.

The statements are SQLAlchemy's for SQLite: each table in `create_all`'s order and its
indexes after it, by name (a table keeps its indexes in a set), then Alembic's table
(`schema_head.VERSION_TABLE`, as Alembic creates it) and the row that stamps the head, as
Alembic's `stamp` writes it on an empty database.
"""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from danube_migrator.head_schema import HEAD_SCHEMA_FILE, STATEMENT_END
from danube_shared.db.schema import Base
from danube_shared.db.schema_head import VERSION_TABLE
from danube_shared.db.schema_revisions import SCHEMA_HEAD

HEADER = (
    "-- The head schema of a new SQLite database: written by\n"
    "-- `uv run python -m danube_migrator.render_head_schema`; do not edit by hand.\n"
)


def render_head_schema() -> str:
    """The file's text: every statement, each closed by `;` and a blank line."""
    dialect = sqlite.dialect()
    statements: list[str] = []
    for table in [*Base.metadata.sorted_tables, VERSION_TABLE]:
        indexes = sorted(table.indexes, key=lambda index: str(index.name))
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        statements.extend(
            str(CreateIndex(index).compile(dialect=dialect)).strip() for index in indexes
        )
    stamp = insert(VERSION_TABLE).values(version_num=SCHEMA_HEAD)
    statements.append(str(stamp.compile(dialect=dialect, compile_kwargs={"literal_binds": True})))
    return HEADER + "".join(f"\n{statement}{STATEMENT_END}" for statement in statements)


def main() -> None:
    HEAD_SCHEMA_FILE.write_text(render_head_schema(), encoding="utf-8")


if __name__ == "__main__":
    main()
