"""`--only-database-tests` (CI's PostgreSQL run): on PostgreSQL it leaves out exactly the
tests that reach no test database, which would only run again as they ran on SQLite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.isolation import program_environment
from tests.support.postgres import TEST_DATABASE_URL_VARIABLE

REPOSITORY = Path(__file__).resolve().parents[1]
# Collection never connects: any PostgreSQL URL makes the run a PostgreSQL one.
SOME_SERVER = "postgresql+asyncpg://postgres@/danube?host=/nonexistent"
# test_ids needs no database (4 tests); test_engine's tests mostly use the test database
# (`database`, `database_settings`), some a file of their own or none (10 tests).
IDS, ENGINE = "tests/db/test_ids.py", "tests/db/test_engine.py"


def collect_only_database_tests(*, server: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q"]
    return subprocess.run(
        [*command, "--only-database-tests", IDS, ENGINE],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        env=program_environment() | ({TEST_DATABASE_URL_VARIABLE: server} if server else {}),
        timeout=120,
        check=False,
    )


def test_only_the_tests_that_reach_the_database_are_collected_on_postgresql():
    selected = collect_only_database_tests(server=SOME_SERVER)
    assert selected.returncode == 0, selected.stdout + selected.stderr
    kept = {line for line in selected.stdout.splitlines() if "::" in line}

    assert not any(test.startswith(IDS) for test in kept)
    assert f"{ENGINE}::test_a_write_commits_when_its_unit_returns" in kept  # `database`
    assert f"{ENGINE}::test_every_pooled_connection_gets_the_pragmas" in kept  # its settings
    # Its own file, and no file at all: as on SQLite.
    assert f"{ENGINE}::test_a_missing_database_file_says_to_run_migrate" not in kept
    assert f"{ENGINE}::test_an_in_memory_database_works_for_unit_tests" not in kept
    assert "tests collected (14 deselected)" in selected.stdout, selected.stdout


def test_the_option_without_a_postgresql_url_is_a_usage_error():
    refused = collect_only_database_tests(server="")
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert TEST_DATABASE_URL_VARIABLE in refused.stderr
