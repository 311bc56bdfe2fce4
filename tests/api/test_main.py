"""`danube-api` as supervisord runs it: waits a bounded time for the schema to reach head,
refuses a database that does not get there (exit 1, saying why), otherwise serves on
api.host:api.port with every log line in JSON."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from danube_api.main import keep_startup_objects_out_of_gc
from tests.support.isolation import free_port, program_environment

API = Path(sys.executable).with_name("danube-api")


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="da"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(directory: Path, database: Path, port: int) -> Path:
    config = directory / "danube.toml"
    config.write_text(
        f'[database]\npath = "{database}"\n'
        f'[keyd]\nsocket_dir = "{directory}"\nrequest_timeout_ms = 300\n'
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    return config


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_missing_database_makes_it_exit_1_saying_to_migrate(run_dir: Path):
    config = write_config(run_dir, run_dir / "absent.db", free_port())
    done = subprocess.run(
        [str(API), "--config", str(config), "--schema-wait", "0"],
        capture_output=True,
        env=program_environment(),
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    (line,) = [line for line in json_lines(done.stderr.decode()) if line["level"] == "error"]
    assert line["message"] == "not serving: the database is not ready"
    assert "danube migrate" in line["detail"]


def test_a_database_without_the_schema_makes_it_exit_1_before_listening(run_dir: Path):
    database = run_dir / "empty.db"
    sqlite3.connect(database).close()
    port = free_port()
    config = write_config(run_dir, database, port)
    done = subprocess.run(
        [str(API), "--config", str(config), "--schema-wait", "0"],
        capture_output=True,
        env=program_environment(),
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "no Danube schema" in done.stderr.decode()
    assert "Uvicorn running" not in done.stderr.decode()


def test_it_serves_with_json_logs_and_stops_cleanly_on_sigterm(
    run_dir: Path, migrated_db_path: Path
):
    port = free_port()
    config = write_config(run_dir, migrated_db_path, port)
    log_path = run_dir / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(API), "--config", str(config)], stdout=log, stderr=log, env=program_environment()
        )
    try:
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            while True:
                try:
                    health = client.get("/healthz")
                    break
                except httpx.TransportError:
                    assert process.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.05)
            assert health.status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["detail"].startswith("keyd: ")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    lines = json_lines(log_path.read_text())  # every line parses as JSON
    messages = [line["message"] for line in lines]
    assert any(message.startswith("Uvicorn running on") for message in messages)
    assert all(line["process"] == "danube-api" for line in lines)
    assert not any("color_message" in line for line in lines)
    paths = [line["path"] for line in lines if line["message"] == "request"]
    assert paths == ["/healthz", "/readyz"]


def test_it_waits_for_a_migration_that_finishes_and_then_serves(run_dir: Path):
    """Started beside the migrator, the API waits for the schema to reach head, logging
    that it waits, and serves once the migration has committed."""
    database = run_dir / "danube.db"
    port = free_port()
    config = write_config(run_dir, database, port)
    log_path = run_dir / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(API), "--config", str(config), "--schema-wait", "60"],
            stdout=log,
            stderr=log,
            env=program_environment(),
        )
    try:
        deadline = time.monotonic() + 30
        while "waiting for the schema to reach head" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        migrate = Path(sys.executable).with_name("danube-migrate")
        subprocess.run(
            [str(migrate), "--config", str(config)],
            env=program_environment(),
            timeout=60,
            check=True,
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            while True:
                try:
                    assert client.get("/healthz").status_code == 200
                    break
                except httpx.TransportError:
                    assert process.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    messages = [line["message"] for line in json_lines(log_path.read_text())]
    assert messages.index("waiting for the schema to reach head") < messages.index("schema at head")


def test_objects_alive_before_serving_are_kept_out_of_full_collections():
    """What lives as long as the process is frozen, so a full collection does not walk it
    while requests wait (80-180 ms pauses on the event loop, measured, without it)."""
    assert gc.get_freeze_count() == 0
    try:
        keep_startup_objects_out_of_gc()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_collector_paused_for_the_import_is_on_again_before_serving():
    """`danube_api.entry` pauses the collector while the API is imported; it must not
    stay off while the API serves, or cyclic garbage would never be freed."""
    gc.disable()
    try:
        keep_startup_objects_out_of_gc()
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_api_imports_structlog_without_rich():
    """`danube_api.entry` marks `rich` absent before the API (and structlog) is imported:
    structlog then sets up its console tracebacks without it, and logging still works."""
    probe = """
import sys, types
stub = types.ModuleType("danube_api.main")
def main():
    import structlog.dev
    from danube_shared.logs import get_logger
    get_logger("probe").info("probe line")
    print("rich loaded:", structlog.dev.rich is not None, file=sys.stderr)
    return 0
stub.main = main
sys.modules["danube_api.main"] = stub
from danube_api.entry import main as entry_main
raise SystemExit(entry_main())
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "rich loaded: False" in result.stderr
