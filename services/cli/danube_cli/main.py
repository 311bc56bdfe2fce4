"""The `danube` command: the operator's entry point.

Subcommands import what they run only when they run, so `danube keygen` never loads the
database layer and `danube migrate` never loads key handling.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from danube_shared.config import Settings, load_settings
from danube_shared.errors import ConfigError
from danube_shared.logs import configure_logging
from danube_shared.program import EXIT_OK, EXIT_USAGE, add_config_argument

PROG = "danube"
DEFAULT_WORKERS = 1
# Each worker is a process running one job at a time; more than this on one host is a typo.
MAX_WORKERS = 64


def build_parser() -> argparse.ArgumentParser:
    """`danube`'s command line: one subcommand per task."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Danube, a self-hosted CI/CD control plane."
    )
    add_config_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", help="run the whole stack in the foreground (dev or single host)"
    )
    add_config_argument(up, subcommand=True)
    up.add_argument(
        "--home",
        type=Path,
        metavar="DIR",
        help="state directory (default: $DANUBE_HOME, else ./.danube)",
    )
    up.add_argument(
        "--workers",
        type=_worker_count,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"how many workers to run (default {DEFAULT_WORKERS}; 0 for none)",
    )
    status = commands.add_parser("status", help="show the state of each program of `danube up`")
    add_config_argument(status, subcommand=True)
    status.add_argument("--home", type=Path, metavar="DIR", help="as given to `danube up`")

    add_config_argument(
        commands.add_parser("keygen", help="write a new encryption key"), subcommand=True
    )
    add_config_argument(
        commands.add_parser("migrate", help="upgrade the database to head"), subcommand=True
    )

    config = commands.add_parser("config", help="check or show the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    add_config_argument(
        config_commands.add_parser("check", help="validate the configuration"), subcommand=True
    )
    add_config_argument(
        config_commands.add_parser("show", help="print the effective configuration as JSON"),
        subcommand=True,
    )
    return parser


def _worker_count(text: str) -> int:
    """`--workers N`: a whole number from 0 to `MAX_WORKERS`."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{count} is not between 0 and {MAX_WORKERS}")
    return count


class _Refused(Exception):
    """The command cannot run; it has said why."""


def _settings(config: Path | None) -> Settings:
    """The validated settings, or a plain line for the person at the terminal (the
    programs under supervisord log their refusals as JSON instead)."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        print(f"{PROG}: config invalid: {exc}", file=sys.stderr)  # noqa: T201 -- a CLI reports on stderr
        raise _Refused from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except _Refused:
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    config: Path | None = args.config
    command: str = args.command

    if command == "config":
        settings = _settings(config)
        if args.config_command == "show":
            print(json.dumps(settings.public_dict(), indent=2, sort_keys=True))  # noqa: T201 -- the command's output
        else:
            print("config ok")  # noqa: T201 -- the command's output
        return EXIT_OK

    if command == "up":
        from danube_cli.up import run_up

        return run_up(config, args.home, workers=args.workers)
    if command == "status":
        from danube_cli.status import run_status

        return run_status(config, args.home)
    if command == "keygen":
        from danube_keyd.keyfile import run_keygen

        settings = _settings(config)
        configure_logging(settings.log, PROG)
        return run_keygen(settings)
    if command == "migrate":
        from danube_migrator.runner import run_migrate

        settings = _settings(config)
        configure_logging(settings.log, "danube-migrate")
        return run_migrate(settings)
    raise AssertionError(command)  # argparse rejects anything else


if __name__ == "__main__":
    raise SystemExit(main())
