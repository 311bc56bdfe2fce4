"""DIR, the one directory `danube up` keeps its state in, and the config it writes there.

Layout (DESIGN section 3): `danube.toml`, `data/danube.db`, `keys/encryption.key`, `run/`
(keyd's sockets, supervisord's socket and pid), `log/` (one file per program, and
`keyd-audit.log`), `work/` (the worker's job workspaces) and `worker.token`.

This process never reads the key: it asks `danube_keyd.keyfile` to write a new one when
there is none, and keyd alone opens it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from danube_cli.console import say
from danube_cli.errors import StackError
from danube_shared.config import Settings
from danube_shared.errors import DanubeError, KeyFileError
from danube_shared.keyd_protocol import socket_dir_problem
from danube_shared.program import EXIT_USAGE

DEFAULT_HOME = Path(".danube")
CONFIG_NAME = "danube.toml"
SUPERVISOR_SOCKET = "supervisor.sock"


@dataclass(frozen=True)
class Layout:
    """Where `danube up` keeps things for one DIR."""

    home: Path
    config: Path
    run_dir: Path
    log_dir: Path
    work_dir: Path

    @classmethod
    def for_home(cls, home: Path, config: Path | None = None) -> Layout:
        home = home.absolute()
        return cls(
            home=home,
            config=(config if config is not None else home / CONFIG_NAME).absolute(),
            run_dir=home / "run",
            log_dir=home / "log",
            work_dir=home / "work",
        )

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / SUPERVISOR_SOCKET


def resolve_home(home: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """`--home`, else `$DANUBE_HOME`, else `./.danube`."""
    env = os.environ if environ is None else environ
    if home is not None:
        return home
    if env.get("DANUBE_HOME"):
        return Path(env["DANUBE_HOME"])
    return DEFAULT_HOME


def check_home_fits(home: Path) -> None:
    """keyd's sockets live in DIR/run; refuse a DIR whose socket paths cannot be bound."""
    problem = socket_dir_problem(home.absolute() / "run")
    if problem is not None:
        raise StackError(
            f"{problem}: choose a shorter --home (for example /tmp/danube)", EXIT_USAGE
        )


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(value, ensure_ascii=False)


def default_config_text(home: Path) -> str:
    """The danube.toml of a first run in `home`: every path points inside it."""
    return f"""\
# Written by `danube up` on its first run in this directory; edit freely.
# Every key and its default: docs/architecture.md. Environment variables
# DANUBE_<SECTION>__<KEY> override this file.

[log]
level = "info"
format = "json"

[database]
path = {_toml_string(str(home / "data" / "danube.db"))}

[keyd]
key_path = {_toml_string(str(home / "keys" / "encryption.key"))}
socket_dir = {_toml_string(str(home / "run"))}
audit_path = {_toml_string(str(home / "log" / "keyd-audit.log"))}

[api]
host = "127.0.0.1"
port = 8480

[worker]
token_file = {_toml_string(str(home / "worker.token"))}
workdir = {_toml_string(str(home / "work"))}
"""


def make_dir(path: Path, mode: int) -> None:
    """Create `path` (and its parents) with `mode` unless it exists."""
    if not path.is_dir():
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        path.chmod(mode)  # mkdir's mode is filtered by the umask


def prepare_home(layout: Layout, *, write_config: bool) -> None:
    """Create DIR (0700) with its `log/`, `run/` and `work/` and, on first run, its
    `danube.toml`."""
    make_dir(layout.home, 0o700)
    make_dir(layout.log_dir, 0o700)
    make_dir(layout.run_dir, 0o750)
    make_dir(layout.work_dir, 0o700)
    if write_config and not layout.config.exists():
        temporary = layout.config.with_name(f".{layout.config.name}.tmp")
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(default_config_text(layout.home))
        temporary.replace(layout.config)
        say(f"wrote {layout.config}")


def _refuse_a_second_key(settings: Settings, key_path: Path) -> None:
    """On a shared PostgreSQL database that already holds users or secrets, this home is
    a new node of an existing site (or its key was lost): a new key would leave the
    stored secrets unreadable here and split the site's keys."""
    if not asyncio.run(_database_holds_data(settings)):
        return
    raise StackError(
        f"the key file {key_path} is missing but the database "
        f"{settings.database.url_for_display()} already holds Danube's users or secrets: "
        "a node of a shared database uses the site's key. Copy the key from another node "
        'as docs/operations.md says ("Running more than one node"), or restore it from '
        "your backup",
        EXIT_USAGE,
    )


async def _database_holds_data(settings: Settings) -> bool:
    # Imported here: SQLAlchemy costs `danube up` time at every start, and only a first
    # run on PostgreSQL asks this.
    from danube_shared.db.engine import Database
    from danube_shared.db.schema_head import holds_data

    database = Database.open(settings.database)
    try:
        return await holds_data(database.engine)
    except DanubeError as exc:
        raise StackError(f"cannot read the database: {exc.message}") from None
    finally:
        await database.dispose()


def ensure_key(settings: Settings, config: Path) -> None:
    """Write a key at `keyd.key_path` unless one is there; never read an existing one.

    A missing key beside an existing database is a lost key, not a first run: a new key
    would leave every stored secret unreadable, so that takes a deliberate `danube keygen`.
    """
    path = settings.keyd.key_path
    if path.exists() or path.is_symlink():
        return
    if settings.database.is_postgresql:
        _refuse_a_second_key(settings, path)
    database = settings.database.path
    if not settings.database.is_postgresql and database.exists():
        raise StackError(
            f"the key file {path} is missing but the database {database} exists: restore "
            "the key from your backup (docs/operations.md). To start over with a new key, "
            "leaving every stored secret unreadable, run `danube keygen --config "
            f"{config}` and enter the secrets again",
            EXIT_USAGE,
        )
    from danube_keyd.keyfile import write_new_key

    try:
        key_id = write_new_key(path)
    except FileExistsError:
        return  # written meanwhile by someone else: theirs stands
    except KeyFileError as exc:
        raise StackError(f"cannot write a key: {exc.message}", EXIT_USAGE) from None
    except OSError as exc:
        raise StackError(f"cannot write a key at {path}: {exc.strerror}") from None
    say(
        f"generated a new key at {path} (key id {key_id.hex()}); back it up apart from "
        "the database: without it no stored secret can be read (docs/operations.md)"
    )
