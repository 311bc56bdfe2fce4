"""Why `danube up` stops before the stack is up."""

from __future__ import annotations

from pathlib import Path

from danube_shared.program import EXIT_FAILURE


class StackError(Exception):
    """`danube up` cannot go on; `exit_code` is what it exits with, and `log` the log
    file whose last lines say why."""

    def __init__(
        self, message: str, exit_code: int = EXIT_FAILURE, log: Path | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.log = log
        # Where this run's part of `log` begins (the files are appended to across runs).
        self.log_offset = 0


class Interrupted(Exception):
    """A stop signal arrived before the stack was up."""
