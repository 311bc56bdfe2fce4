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
from typing import TextIO

from danube_shared.config import Settings, load_settings
from danube_shared.errors import ConfigError
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

    logs = commands.add_parser("logs", help="print a job's step logs")
    add_config_argument(logs, subcommand=True)
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--home", type=Path, metavar="DIR", help="as given to `danube up`")
    add_config_argument(
        commands.add_parser("keygen", help="write a new encryption key"), subcommand=True
    )
    add_config_argument(
        commands.add_parser("migrate", help="upgrade the database to head"), subcommand=True
    )

    key = commands.add_parser("key", help="rotate, rewrap, retire or show the encryption keys")
    key_commands = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    add_config_argument(
        key_commands.add_parser("rotate", help="make a new active key; keyd reloads"),
        subcommand=True,
    )
    rewrap = key_commands.add_parser(
        "rewrap", help="re-encrypt every stored secret under the active key, in batches"
    )
    add_config_argument(rewrap, subcommand=True)
    rewrap.add_argument(
        "--batch-size", type=int, default=200, metavar="N", help="secrets per batch (1-1000)"
    )
    rewrap.add_argument(
        "--pause-ms",
        type=int,
        default=0,
        metavar="MS",
        help="sleep between batches, to spare a busy database",
    )
    retire = key_commands.add_parser("retire", help="delete an old key no secret uses")
    add_config_argument(retire, subcommand=True)
    retire.add_argument("key_id", metavar="KEY_ID", help="8 hex digits, as `key status` prints")
    add_config_argument(
        key_commands.add_parser("status", help="key ids, secrets per key, encryption count"),
        subcommand=True,
    )

    audit = commands.add_parser("audit", help="check keyd's audit chain")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    add_config_argument(
        audit_commands.add_parser("verify", help="verify the chain; name the first bad line"),
        subcommand=True,
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
    # `danube user create NAME [--admin]` and `danube token create USER`.
    user = commands.add_parser("user", help="create a user and print its API token")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    create_user = user_commands.add_parser("create", help="create a user; prints its new token")
    add_config_argument(create_user, subcommand=True)
    create_user.add_argument("name", metavar="NAME")
    create_user.add_argument("--admin", action="store_true", help="make the user a site admin")
    token = commands.add_parser("token", help="issue an API token for a user")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create_token = token_commands.add_parser(
        "create", help="print a new API token for an existing user"
    )
    add_config_argument(create_token, subcommand=True)
    create_token.add_argument("user", metavar="USER")
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


def _configure_logging(settings: Settings, process: str, stream: TextIO | None = None) -> None:
    """Logging for a command that logs. structlog is imported only then: `danube up`
    talks to its operator in plain lines, and importing it would delay the stack's start."""
    from danube_shared.logs import configure_logging as configure

    configure(settings.log, process, stream)


def _run(args: argparse.Namespace) -> int:  # noqa: PLR0911 -- one return per subcommand
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
    if command in ("status", "logs"):
        return _run_home_reader(args, config)
    if command == "keygen":
        from danube_keyd.keyfile import run_keygen

        settings = _settings(config)
        _configure_logging(settings, PROG)
        return run_keygen(settings)
    if command in ("key", "audit"):
        return _run_key_or_audit(args, _settings(config))
    if command == "migrate":
        from danube_migrator.main import migrate_to_head

        settings = _settings(config)
        _configure_logging(settings, "danube-migrate")
        return migrate_to_head(settings)
    if command in ("user", "token"):
        from danube_cli.access_commands import run_token_create, run_user_create

        settings = _settings(config)
        _configure_logging(settings, PROG)
        if command == "user":
            return run_user_create(settings, args.name, is_admin=args.admin)
        return run_token_create(settings, args.user)
    raise AssertionError(command)  # argparse rejects anything else


def _run_home_reader(args: argparse.Namespace, config: Path | None) -> int:
    """The commands that read a `danube up` home's stack: `status`, `logs`."""
    if args.command == "status":
        from danube_cli.status import run_status

        return run_status(config, args.home)
    from danube_cli.job_logs import run_logs

    return run_logs(config, args.home, args.job_id, follow=args.follow)


def _run_key_or_audit(args: argparse.Namespace, settings: Settings) -> int:
    from danube_cli import key_commands

    _configure_logging(settings, PROG, stream=sys.stderr)
    if args.command == "audit":
        return key_commands.run_audit_verify(settings)
    action: str = args.key_command
    if action == "rotate":
        return key_commands.run_key_rotate(settings)
    if action == "rewrap":
        return key_commands.run_key_rewrap(
            settings, batch_size=args.batch_size, pause_ms=args.pause_ms
        )
    if action == "retire":
        return key_commands.run_key_retire(settings, args.key_id)
    return key_commands.run_key_status(settings)


if __name__ == "__main__":
    raise SystemExit(main())
