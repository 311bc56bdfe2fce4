"""`danube status`: what supervisorctl says about the stack `danube up` runs in DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from danube_cli.errors import StackError
from danube_cli.home import Layout, resolve_home
from danube_cli.supervisord import programs_dir, supervisor_environment, supervisord_config
from danube_shared.config import load_settings
from danube_shared.errors import ConfigError
from danube_shared.program import EXIT_FAILURE

PROG = "danube status"


def run_status(config: Path | None, home: Path | None) -> int:
    """`danube status [--home DIR]`: supervisorctl status of DIR's supervisord.
    (`--config` is accepted, as by every command, but the stack is found by DIR.)"""
    del config
    layout = Layout.for_home(resolve_home(home))
    if not layout.supervisor_socket.exists():
        print(  # noqa: T201 -- the command's output
            f"{PROG}: no stack running in {layout.home} (no {layout.supervisor_socket})",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        bin_dir = programs_dir()
        conf = supervisord_config()
    except StackError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)  # noqa: T201 -- the command's output
        return EXIT_FAILURE
    env = supervisor_environment(layout, bin_dir, base=os.environ)
    completed = subprocess.run(  # noqa: S603 -- supervisorctl from our own environment
        [
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "--configuration",
            str(conf),
            "--serverurl",
            f"unix://{layout.supervisor_socket}",
            "status",
        ],
        env=env,
        check=False,
    )
    _warn_about_the_key(layout.config)
    return completed.returncode


def _warn_about_the_key(config: Path) -> None:
    """Say so when the running keyd's active key is past half its encryption limit."""
    from danube_cli.key_commands import keyd_encryption_warning

    try:
        settings = load_settings(config)
    except ConfigError:
        return  # supervisorctl has said what runs; a bad config is `danube up`'s to report
    warning = keyd_encryption_warning(settings)
    if warning is not None:
        print(f"{PROG}: {warning}", file=sys.stderr)  # noqa: T201 -- the command's output
