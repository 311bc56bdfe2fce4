"""`danube-migrate`: upgrade the database to the schema head, then exit.

Exit codes: 0 at head (whether or not anything had to change), 1 when the migration fails
(one clear line in the log), 2 when the configuration is invalid.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

from danube_migrator.head_schema import create_new_database
from danube_shared.config import Settings
from danube_shared.program import EXIT_OK, program_parser, start_program

PROG = "danube-migrate"


def migrate_to_head(settings: Settings) -> int:
    """`danube migrate` and `danube-migrate`: exit 0 at head, 1 with one clear line if
    not. A database file that does not exist yet (a first `danube up`) is created at head
    with `sqlite3` alone; anything else takes the full migration (`runner`), imported
    only then: it brings SQLAlchemy."""
    if create_new_database(settings.database):
        return EXIT_OK
    from danube_migrator.runner import run_migrate

    return run_migrate(settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = program_parser(PROG, "Upgrade the Danube database to the schema head.")
    args = parser.parse_args(argv)
    config: Path | None = args.config
    code = migrate_to_head(start_program(PROG, config))
    # What this one-shot loaded (SQLAlchemy, Alembic, the models) lives until its exit,
    # where the interpreter's last full collection would walk all of it: about a quarter of
    # a second of CPU, spent while the API starting beside it needs the cores. Frozen
    # objects are left out of that walk; the exit is otherwise the same.
    gc.freeze()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
