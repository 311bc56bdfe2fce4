"""DESIGN invariant 1, second half: the API and the migrator never load a key.

Each process runs for real with `keyd.key_path` pointing at a FIFO that has no writer: a
plain open() of it for reading blocks forever, so any attempt to read the key hangs the
process and the test fails at its timeout (or on its hang guard), loudly, instead of
passing by luck. (A chmod-000 file would prove nothing when the suite runs as root.)
The first half, keyd's imports, is tests/keyd/test_imports.py.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.isolation import free_port, program_environment

BIN = Path(sys.executable).parent
REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGES = (
    REPOSITORY / "services" / "api" / "danube_api",
    REPOSITORY / "services" / "migrator" / "danube_migrator",
)
# A process still not done after this long hangs (on the FIFO, most likely). It guards
# against a hang, not a speed: the suite never fails on a timing.
HANG_GUARD_S = 60.0


@dataclass(frozen=True)
class Home:
    """A short directory with a config whose key path is a writerless FIFO."""

    root: Path
    config: Path
    database: Path
    key_path: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def home() -> Iterator[Home]:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="dx"))
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    key_path = keys / "encryption.key"
    os.mkfifo(key_path, 0o600)
    database = root / "data" / "danube.db"
    port = free_port()
    config = root / "danube.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [log]
            level = "debug"
            [database]
            path = "{database}"
            [keyd]
            key_path = "{key_path}"
            socket_dir = "{root}/run"
            request_timeout_ms = 200
            [api]
            host = "127.0.0.1"
            port = {port}
            """
        )
    )
    try:
        yield Home(root, config, database, key_path, port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def migrated_home(home: Home, migrated_template: Path) -> Home:
    home.database.parent.mkdir(mode=0o700)
    shutil.copyfile(migrated_template, home.database)
    return home


def _run_python(script: str, *args: str) -> dict[str, object]:
    """Run `script` in a fresh interpreter (killed at the hang guard); its last stdout
    line, as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return report


def _still_a_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(path.lstat().st_mode)


# Runs danube-migrate's real main() and reports the modules it had loaded by its end.
_MIGRATOR_PROBE = textwrap.dedent(
    """
    import json, sys

    import danube_migrator.main

    code = danube_migrator.main.main(["--config", sys.argv[1]])
    print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
    """
)

# Runs danube-api's real main() (lifespan and all) in the main thread; a helper thread
# waits for /healthz 200, records every loaded module, and sends SIGTERM for a clean stop.
_API_PROBE = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time, urllib.request

    import danube_api.main

    config, url = sys.argv[1], sys.argv[2]
    report = {"healthy": False, "modules": []}

    def probe():
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not report["healthy"]:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                    report["healthy"] = response.status == 200
            except OSError:
                time.sleep(0.05)
        report["modules"] = sorted(sys.modules)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=probe, daemon=True).start()
    report["exit"] = danube_api.main.main(["--config", config, "--schema-wait", "0"])
    print(json.dumps(report))
    """
)


def _keyd_modules(modules: object) -> list[str]:
    assert isinstance(modules, list)
    return [str(name) for name in modules if str(name).split(".")[0] == "danube_keyd"]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType] -- JSON list


def test_danube_migrate_migrates_with_a_key_path_nobody_can_read(home: Home) -> None:
    """`danube-migrate` exits 0 at head while keyd.key_path is a FIFO that would block
    any reader: it never opens the key."""
    result = subprocess.run(
        [str(BIN / "danube-migrate"), "--config", str(home.config)],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"database migrated"' in result.stderr
    assert _still_a_fifo(home.key_path)


@pytest.mark.parametrize("database", ["new file", "empty file"])
def test_a_migrator_run_never_imports_danube_keyd(home: Home, database: str) -> None:
    """After the migrator's main() has migrated a database, no danube_keyd module is in
    its sys.modules: a new file (created from head_schema.sql) or an empty one (the full
    migration, `runner`)."""
    if database == "empty file":
        home.database.parent.mkdir(parents=True)
        home.database.write_bytes(b"")
    report = _run_python(_MIGRATOR_PROBE, str(home.config))
    assert report["exit"] == 0
    modules = report["modules"]
    assert isinstance(modules, list)
    assert ("danube_migrator.runner" in modules) == (database == "empty file")
    assert _keyd_modules(modules) == []


def _fds_pointing_at(pid: int, target: Path) -> list[str]:
    found: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if fd.readlink() == target:
                    found.append(fd.name)
    return found


def test_danube_api_serves_with_a_key_path_nobody_can_read(migrated_home: Home) -> None:
    """`danube-api --schema-wait 0` answers /healthz 200 while keyd.key_path is a FIFO
    that would block any reader, and holds no descriptor on it: it never opens the key."""
    home = migrated_home
    process = subprocess.Popen(
        [str(BIN / "danube-api"), "--config", str(home.config), "--schema-wait", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=program_environment(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        status = 0
        while status != 200:
            assert process.poll() is None, f"danube-api exited with {process.returncode}"
            assert time.monotonic() < deadline, "danube-api hung (on the key path?)"
            with contextlib.suppress(httpx.TransportError):
                status = httpx.get(f"{home.url}/healthz", timeout=2).status_code
            time.sleep(0.05)
        assert _fds_pointing_at(process.pid, home.key_path) == []
        assert _still_a_fifo(home.key_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_serving_api_never_imports_danube_keyd(migrated_home: Home) -> None:
    """Once the API's real main() serves /healthz 200 (its lifespan has run), no
    danube_keyd module is in its sys.modules."""
    report = _run_python(_API_PROBE, str(migrated_home.config), migrated_home.url)
    assert report["healthy"] is True
    assert report["exit"] == 0
    modules = report["modules"]
    assert isinstance(modules, list)
    assert "danube_api.app" in modules
    assert _keyd_modules(modules) == []


def _sources() -> list[Path]:
    files = [path for package in PACKAGES for path in sorted(package.rglob("*.py"))]
    assert len(files) > 10, files  # the walk found the packages
    return files


def _imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.split(".")[0] == "danube_keyd"
        ):
            names.append(node.value)  # importlib.import_module("danube_keyd...") and the like
    return names


def test_no_api_or_migrator_module_imports_danube_keyd() -> None:
    """No module under services/api or services/migrator imports danube_keyd, at top
    level or inside a function, nor names it for a dynamic import."""
    offenders = [
        f"{path.relative_to(REPOSITORY)}: {name}"
        for path in _sources()
        for name in _imported_modules(ast.parse(path.read_text(), str(path)))
        if name.split(".")[0] == "danube_keyd"
    ]
    assert offenders == []


def test_no_api_or_migrator_module_reads_keyd_key_path() -> None:
    """No module under services/api or services/migrator touches `key_path` (as an
    attribute, a name or a string), so none can find the key to read it."""
    offenders = [
        f"{path.relative_to(REPOSITORY)}:{node.lineno}"
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if (isinstance(node, ast.Attribute) and node.attr == "key_path")
        or (isinstance(node, ast.Name) and node.id == "key_path")
        or (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "key_path" in node.value
        )
    ]
    assert offenders == []


# DESIGN section 2: keyd and the worker never import the database layer; the rest of
# danube_shared stays free of it too, so that they can import danube_shared. (The
# import-linter contracts in pyproject.toml check the same on the import graph; these
# also catch an import inside a function or a dynamic one.)
DATABASE_PACKAGES = ("sqlalchemy", "alembic")
NO_DATABASE_PACKAGES = (
    REPOSITORY / "services" / "keyd" / "danube_keyd",
    REPOSITORY / "services" / "worker" / "danube_worker",
)
SHARED = REPOSITORY / "shared" / "danube_shared"


def _database_imports(names: list[str]) -> list[str]:
    return [
        name
        for name in names
        if name.split(".")[0] in DATABASE_PACKAGES or name.startswith("danube_shared.db")
    ]


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported when the module is imported: its top-level statements, outside
    functions and classes, and outside `if TYPE_CHECKING:` blocks, which never run."""
    names: list[str] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                pending += node.body
            pending += node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                pending += handler.body
        elif isinstance(node, ast.With):
            pending += node.body
    return names


def test_keyd_and_the_worker_never_import_the_database_layer() -> None:
    """No module of danube_keyd or danube_worker imports sqlalchemy, alembic or
    danube_shared.db, at top level or inside a function, nor names one for a dynamic
    import."""
    files = [path for package in NO_DATABASE_PACKAGES for path in sorted(package.rglob("*.py"))]
    assert any(path.parent.name == "danube_worker" for path in files), files
    assert len(files) > 5, files
    offenders = [
        f"{path.relative_to(REPOSITORY)}: {name}"
        for path in files
        for name in _database_imports(_all_imported_names(ast.parse(path.read_text(), str(path))))
    ]
    assert offenders == []


def test_danube_shared_outside_db_imports_no_database_package_at_module_level() -> None:
    """Importing danube_shared (config, logs, errors, the keyd protocol and clients) loads
    neither sqlalchemy nor alembic: only danube_shared.db may."""
    files = [path for path in sorted(SHARED.rglob("*.py")) if SHARED / "db" not in path.parents]
    assert SHARED / "config.py" in files
    offenders = [
        f"{path.relative_to(REPOSITORY)}: {name}"
        for path in files
        for name in _module_level_imports(ast.parse(path.read_text(), str(path)))
        if name.split(".")[0] in DATABASE_PACKAGES
    ]
    assert offenders == []


def test_the_module_level_scan_sees_what_an_import_would_load() -> None:
    """The scan above is not blind: it finds top-level and conditional imports, and skips
    function bodies and TYPE_CHECKING blocks."""
    tree = ast.parse(
        textwrap.dedent(
            """
            import sqlalchemy.ext
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                import alembic
            try:
                from alembic import command
            except ImportError:
                pass
            def later():
                import sqlalchemy.orm
            """
        )
    )
    assert sorted(_module_level_imports(tree)) == ["alembic", "sqlalchemy.ext", "typing"]


def _all_imported_names(tree: ast.AST) -> list[str]:
    """Every module `tree` imports anywhere, plus string constants naming a database
    package (importlib.import_module("sqlalchemy") and the like)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.split(".")[0] in DATABASE_PACKAGES
        ):
            names.append(node.value)
    return names
