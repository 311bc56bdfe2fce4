"""A Danube stack for benchmarks: keyd and the API started directly (not under
supervisord) in a short temporary directory, so each process's pid is known and its CPU
and memory can be read."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.processes import free_port, running

BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def program(name: str) -> str:
    """A console script of this project, from the venv `uv run` uses."""
    found = shutil.which(name)
    return found if found is not None else str(BIN / name)


@dataclass
class Stack:
    home: Path
    config: Path
    port: int
    socket_dir: Path
    keyd: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    # A site admin's API token, made with `danube user create` after the migration.
    token: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def write_config(home: Path, port: int, *, level: str = "warn") -> Path:
    config = home / "danube.toml"
    config.write_text(
        f"""[log]
level = "{level}"

[database]
path = "{home}/data/danube.db"

[keyd]
key_path = "{home}/keys/encryption.key"
socket_dir = "{home}/run"
audit_path = "{home}/log/keyd-audit.log"

[api]
port = {port}

[worker]
token_file = "{home}/worker.token"
workdir = "{home}/work"
"""
    )
    return config


@contextlib.contextmanager
def stack_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="db"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 -- loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


def wait_http_ok(url: str, timeout_s: float) -> float:
    """Seconds until `url` answers 200."""
    start = time.perf_counter()
    deadline = start + timeout_s
    while time.perf_counter() < deadline:
        if http_ok(url):
            return time.perf_counter() - start
        time.sleep(0.01)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s}s")


@contextlib.contextmanager
def danube_stack(*, with_api: bool = True) -> Iterator[Stack]:
    """keyd (and the API) running on a fresh migrated database and a new key."""
    with stack_home() as home:
        port = free_port()
        config = write_config(home, port)
        stack = Stack(home=home, config=config, port=port, socket_dir=home / "run")
        subprocess.run([program("danube"), "keygen", "--config", str(config)], check=True)
        subprocess.run([program("danube-migrate"), "--config", str(config)], check=True)
        stack.token = subprocess.run(
            [program("danube"), "--config", str(config), "user", "create", "bench", "--admin"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        with running(
            [program("danube-keyd"), "--config", str(config)], log=home / "keyd.log"
        ) as keyd:
            stack.keyd = keyd
            deadline = time.monotonic() + 10
            while not (stack.socket_dir / "keyd-worker.sock").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("keyd did not create its sockets")
                time.sleep(0.01)
            if not with_api:
                yield stack
                return
            with running(
                [program("danube-api"), "--config", str(config)], log=home / "api.log"
            ) as api:
                stack.api = api
                wait_http_ok(f"{stack.base_url}/readyz", 30)
                yield stack


@contextlib.contextmanager
def programs_use_database(url: str | None) -> Iterator[None]:
    """Every program started meanwhile uses `url` (the config's environment override)."""
    if url is None:
        yield
        return
    variable = "DANUBE_DATABASE__URL"
    before = os.environ.get(variable)
    os.environ[variable] = url
    try:
        yield
    finally:
        if before is None:
            del os.environ[variable]
        else:
            os.environ[variable] = before
