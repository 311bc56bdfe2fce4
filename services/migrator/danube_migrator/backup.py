"""The copy of the database taken before a migration changes it.

SQLite's online backup API copies a consistent snapshot even while others use the
database. The copy is written under a temporary name, with the database file's permission
bits, switched to a rollback journal (one self-contained file) and renamed into place, so
the previous backup is replaced only by a complete one.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from danube_shared.db.error_translation import translate_error
from danube_shared.errors import DatabaseError

BACKUP_SUFFIX = ".pre-migrate.bak"


def backup_path(database: Path) -> Path:
    """Where the backup of `database` goes: beside it, `danube.db.pre-migrate.bak`."""
    return database.with_name(database.name + BACKUP_SUFFIX)


def take_backup(database: Path, *, busy_timeout_ms: int) -> Path:
    """Copy `database` beside itself; returns the backup's path."""
    target = backup_path(database)
    partial = target.with_name(target.name + ".partial")
    try:
        partial.unlink(missing_ok=True)
        mode = stat.S_IMODE(database.stat().st_mode)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        _copy(database, partial, timeout_s=busy_timeout_ms / 1000)
        _fsync(partial)
        partial.replace(target)
        _fsync(target.parent)
    except sqlite3.Error as error:
        partial.unlink(missing_ok=True)
        raise translate_error(error, str(database)) from error
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise DatabaseError(
            f"cannot write the pre-migration backup {target} ({error.strerror}); make its "
            "directory writable and free some space, then run the migration again"
        ) from None
    return target


def _copy(source_path: Path, target_path: Path, *, timeout_s: float) -> None:
    source = sqlite3.connect(source_path, timeout=timeout_s)
    try:
        target = sqlite3.connect(target_path, timeout=timeout_s)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
    finally:
        source.close()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
