"""What every Danube program does first: parse `--config`, load and validate the settings,
configure logging. A bad configuration ends the program with one line on stderr and exit
code 2, before anything else happens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from danube_shared.config import Settings, load_settings
from danube_shared.errors import ConfigError
from danube_shared.logs import configure_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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
    """End the program with one clear line on stderr."""
    print(f"{prog}: error: {message}", file=sys.stderr)  # noqa: T201 -- before logging exists
    raise SystemExit(code)


def load_or_exit(prog: str, config: Path | None) -> Settings:
    """The validated settings, or exit 2 naming the file, key and problem."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        fail(prog, str(exc), EXIT_USAGE)


def start_program(prog: str, config: Path | None) -> Settings:
    """Load the settings (exit 2 if invalid) and configure logging for `prog`."""
    settings = load_or_exit(prog, config)
    configure_logging(settings.log, prog)
    return settings
