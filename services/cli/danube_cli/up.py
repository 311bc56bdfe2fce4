"""`danube up`: the whole stack on one host, in the foreground.

It prepares DIR (`home.py`: the config and the key on first run only), then runs
supervisord in the foreground on `deploy/supervisord.conf` (the same file a host install
uses), which starts the migrator, keyd, the API and `--workers N` workers (default 1, 0
for none) together: the API waits for the schema head the migrator brings (DESIGN
section 3). It prints the API URL once the migrator has
exited 0 and `/readyz` answers 200. A program that fails while the stack comes up ends
`danube up` with that program's own words (the tail of its log) and its verdict: exit 2 for
a refused config or key, else 1. SIGINT or SIGTERM stops supervisord, which stops every
program; then `danube up` exits 0.
"""

from __future__ import annotations

import os
from pathlib import Path

from danube_cli.console import say
from danube_cli.errors import Interrupted, StackError
from danube_cli.home import (
    Layout,
    check_home_fits,
    ensure_key,
    make_dir,
    prepare_home,
    resolve_home,
)
from danube_cli.stop_request import StopRequest
from danube_cli.supervisord import (
    Supervisor,
    programs_dir,
    running_supervisor,
    supervisor_environment,
)
from danube_shared.config import load_settings
from danube_shared.errors import ConfigError
from danube_shared.program import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

WATCH_POLL_S = 0.5


def watch(supervisor: Supervisor, stop: StopRequest, workers: int = 0) -> int:
    """While the stack runs: tell the operator when a program (keyd, the API, one of the
    `workers` workers) restarts or stays down. Returns when a stop is requested (EXIT_OK)
    or supervisord dies (EXIT_FAILURE)."""
    from danube_cli.diagnosis import SERVICES
    from danube_cli.supervisor_control import EXITED, FATAL, SupervisorUnavailable

    watched = (*SERVICES, *(f"worker-{number}" for number in range(workers)))
    pids: dict[str, int] = {}
    down: set[str] = set()
    while not stop.event.wait(WATCH_POLL_S):
        code = supervisor.exited()
        if code is not None:
            say(f"supervisord exited on its own with code {code}")
            return EXIT_FAILURE
        try:
            programs = supervisor.programs()
        except SupervisorUnavailable:
            continue
        for name in watched:
            info = programs.get(name)
            if info is None:
                continue
            if info.pid and pids.get(name, info.pid) != info.pid:
                say(f"{name} was restarted by supervisord (pid {pids[name]} -> {info.pid})")
            if info.pid:
                pids[name] = info.pid
            if info.state not in (FATAL, EXITED):
                down.discard(name)
            elif name not in down:
                down.add(name)
                say(
                    f"{name} is down and supervisord will not restart it ({info.state}); "
                    f"see {info.logfile}, then `danube status`"
                )
    return EXIT_OK


def _workers_phrase(workers: int) -> str:
    return {0: "no worker", 1: "1 worker"}.get(workers, f"{workers} workers")


def run_up(config: Path | None, home: Path | None, *, workers: int = 1) -> int:
    """`danube up [--config PATH] [--home DIR] [--workers N]`."""
    stop = StopRequest()
    with stop.installed():
        try:
            return _up(config, home, stop, workers)
        except StackError as exc:
            say(f"error: {exc.message}")
            if exc.log is not None:
                from danube_cli.diagnosis import report_log

                report_log(exc.log, exc.log_offset)
            return exc.exit_code


SHARED_ACCOUNT_WARNING = (
    "warning: keyd and the API run under one account in this mode, so the API's account "
    "can read the key; it is not for multi-user hosts (install them under separate "
    "accounts, see docs/operations.md)"
)


def _up(config: Path | None, home: Path | None, stop: StopRequest, workers: int) -> int:
    layout = Layout.for_home(resolve_home(home), config)
    check_home_fits(layout.home)
    say(SHARED_ACCOUNT_WARNING)
    try:
        prepare_home(layout, write_config=config is None)
    except OSError as exc:
        raise StackError(f"cannot prepare {layout.home}: {exc}") from None
    marks = {path: path.stat().st_size for path in layout.log_dir.glob("*.log")}
    try:
        return _start_and_run(layout, stop, workers)
    except StackError as exc:
        if exc.log is not None:
            exc.log_offset = marks.get(exc.log, 0)
        raise


def _start_and_run(layout: Layout, stop: StopRequest, workers: int) -> int:
    try:
        settings = load_settings(layout.config)
    except ConfigError as exc:
        raise StackError(f"config invalid: {exc}", EXIT_USAGE) from None
    try:
        make_dir(settings.database.path.parent, 0o700)
        make_dir(settings.keyd.socket_dir, 0o750)
    except OSError as exc:
        raise StackError(f"cannot create a directory the config names: {exc}") from None
    bin_dir = programs_dir()
    ensure_key(settings, layout.config)
    env = supervisor_environment(
        layout,
        bin_dir,
        base=os.environ,
        workers=workers,
        kill_grace_s=settings.worker.kill_grace_s,
    )
    # Stale sockets of a stack killed earlier are reused by supervisord; a live one is not.
    if running_supervisor(layout):
        raise StackError(
            f"a stack is already running in {layout.home} (`danube status --home {layout.home}`)"
        )

    say(
        f"starting the migrator, keyd, the API and {_workers_phrase(workers)} under "
        f"supervisord (logs in {layout.log_dir})"
    )
    supervisor = Supervisor(layout, env)
    # Imported once supervisord is spawned: these imports overlap its start.
    from danube_cli.readiness import api_url, wait_until_ready

    try:
        try:
            # Polling supervisord's socket also ends the up-to-a-second wait of its main
            # loop before its first spawn.
            wait_until_ready(supervisor, settings, stop)
        except Interrupted:
            say(f"stopping ({stop.signal_name})")
            return EXIT_OK
        # Imported only now: it brings the database layer (SQLAlchemy), whose import would
        # otherwise delay supervisord's start and compete with the programs' own starts.
        from danube_cli.access_commands import bootstrap_home

        admin_token = bootstrap_home(layout.home, settings)
        if workers:
            # Only now: on a first run their token file did not exist before the bootstrap.
            supervisor.client.start_group("worker")
        say(f"the site admin's API token is in {admin_token}")
        print(  # noqa: T201 -- the one line of output the command exists for
            f"Danube is ready at {api_url(settings)} (state in {layout.home}; Ctrl-C stops it)",
            flush=True,
        )
        print(  # noqa: T201 -- the page people open (DESIGN 16), beside the API's URL
            f"The web page is at {api_url(settings)}/ (sign in with an API token)", flush=True
        )
        code = watch(supervisor, stop, workers)
        if stop.requested:
            say(f"stopping ({stop.signal_name})")
        return code
    finally:
        supervisor.stop()
        if stop.requested:
            say("stopped")
