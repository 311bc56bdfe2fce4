"""What every Danube program does first: parse `--config`, load and validate the settings,
configure logging. A bad configuration ends the program with exit code 2 before anything
else happens, and one log line saying why.

A refusal is a log line like every other (DESIGN section 8): one JSON object on stderr,
at level `error`, whose message starts with `refused to start: `. When the config itself
is refused, logging is configured with the defaults first, so that line has the same
shape. (The `danube` command talks to a person and prints its refusals plainly instead.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from danube_shared.config import LogSettings, Settings, load_settings
from danube_shared.errors import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

REFUSED = "refused to start"


def add_config_argument(parser: argparse.ArgumentParser, *, subcommand: bool = False) -> None:
    """`--config PATH`. A subcommand's copy leaves the attribute alone when not given, so
    `danube --config X up` and `danube up --config X` mean the same."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        default=argparse.SUPPRESS if subcommand else None,
        help="config file (default: $DANUBE_CONFIG, else /etc/danube/danube.toml)",
    )


def program_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_argument(parser)
    return parser


def fail(prog: str, message: str, code: int) -> NoReturn:
    """End the program `prog` with exit `code` and one log line saying why: through the
    program's logging, or, if it has none yet, JSON lines on stderr with the defaults."""
    # Imported here, not at the top: `danube up` takes its exit codes and `--config` from
    # this module, and structlog would add a tenth of a second before it starts the stack.
    import structlog

    from danube_shared.logs import configure_logging, get_logger

    if not structlog.is_configured():
        configure_logging(LogSettings(), prog, sys.stderr)
    # The refusal is the message itself, so that a person reading the log (or `danube up`
    # quoting it) reads one sentence.
    log = get_logger(__name__)
    log.error(f"{REFUSED}: {message}", exit_code=code)  # noqa: G004 -- see above
    raise SystemExit(code)


def load_or_exit(prog: str, config: Path | None) -> Settings:
    """The validated settings, or exit 2 naming the file, key and problem."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        fail(prog, str(exc), EXIT_USAGE)


def start_program(prog: str, config: Path | None) -> Settings:
    """Load the settings (exit 2 if invalid) and configure logging for `prog`."""
    from danube_shared.logs import configure_logging

    settings = load_or_exit(prog, config)
    configure_logging(settings.log, prog)
    return settings
