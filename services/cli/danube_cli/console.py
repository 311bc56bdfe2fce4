"""How `danube up` talks to the person who ran it: plain sentences on stderr, each
prefixed with the command's name (never JSON: that is for the programs' logs)."""

from __future__ import annotations

import sys

PROG = "danube up"


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)  # noqa: T201 -- the command talks to its operator


def show(line: str) -> None:
    """One line as it is (a program's own words, quoted from its log)."""
    print(line, file=sys.stderr, flush=True)  # noqa: T201 -- the command talks to its operator
