"""The WAL checkpoints of a SQLite writer, run on their own thread instead of inside the
writer's commits.

SQLite's auto-checkpoint runs in the commit that takes the WAL past 1000 pages: that
commit copies the WAL into the database file and syncs both, while every write queued
behind it waits. Measured on the log route (64 KiB appends, WAL, `synchronous=NORMAL`):
a commit took 0.14 ms at the median and 0.63 ms on average, up to 30 ms when it
checkpointed; without the auto-checkpoint, 0.2 ms and 0.22 ms.

So the writer's connection turns the auto-checkpoint off (`NO_AUTO_CHECKPOINT`), and after
its commits `Checkpointer.note_commit()` wakes this thread, which runs
`PRAGMA wal_checkpoint(PASSIVE)` on its own connection, at most every `INTERVAL_S`. A
PASSIVE checkpoint is the auto-checkpoint's own kind: it never waits for a lock nor blocks
a reader or the writer, copies what no reader still needs, and the writer restarts the
WAL from its start once a checkpoint has copied all of it. Writes of other processes (the
migrator, the CLI) keep SQLite's auto-checkpoint on their own connections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Engine

from danube_shared.logs import get_logger

# On the writer's connection: its commits never checkpoint.
NO_AUTO_CHECKPOINT: Final = "PRAGMA wal_autocheckpoint = 0"
# Often enough that the WAL stays a few MiB under a steady write load, rarely enough
# that its syncs stay a small share of the disk's time.
INTERVAL_S: Final = 0.2
_CHECKPOINT: Final = "PRAGMA wal_checkpoint(PASSIVE)"

_log = get_logger(__name__)


def turn_off_auto_checkpoint(dbapi_connection: Any, _record: object) -> None:
    """A `connect` hook for the writer's engine."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(NO_AUTO_CHECKPOINT)
    finally:
        cursor.close()


class Checkpointer:
    """One thread checkpointing the WAL after commits; started by the first
    `note_commit`, stopped by `close`. `make_engine` builds the engine of its connection
    (in the thread)."""

    def __init__(
        self, make_engine: Callable[[], Engine], *, interval_s: float = INTERVAL_S
    ) -> None:
        self._make_engine = make_engine
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def note_commit(self) -> None:
        """The writer committed: checkpoint soon. Costs the writer an Event set."""
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._closing.is_set():
                    self._thread = threading.Thread(
                        target=self._serve, name="danube-db-checkpoint", daemon=True
                    )
                    self._thread.start()
        self._wake.set()

    def close(self) -> None:
        """Stop the thread (after the checkpoint under way, if any)."""
        with self._lock:
            self._closing.set()
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None:
            thread.join()

    def _serve(self) -> None:
        engine: Engine | None = None
        try:
            while True:
                self._wake.wait()
                if self._closing.is_set():
                    return
                self._wake.clear()
                if engine is None:
                    engine = self._make_engine()
                self._checkpoint(engine)
                # Commits meanwhile set `_wake` again: one checkpoint covers them all.
                if self._closing.wait(self._interval_s):
                    return
        finally:
            if engine is not None:
                engine.dispose()

    def _checkpoint(self, engine: Engine) -> None:
        try:
            # The DBAPI connection itself: a checkpoint runs outside any transaction,
            # and SQLAlchemy's connection would begin one.
            connection = engine.raw_connection()
            try:
                cursor = connection.cursor()
                try:
                    cursor.execute(_CHECKPOINT)
                    cursor.fetchall()
                finally:
                    cursor.close()
            finally:
                connection.close()
        except Exception as error:  # noqa: BLE001 -- the thread must outlive a bad round (sqlite3's errors or SQLAlchemy's)
            # Nothing is lost: the WAL grows until a later checkpoint copies it.
            _log.warning("WAL checkpoint failed", error=type(error).__name__)
