"""Fixtures of the worker tests: a job workspace whose processes are all killed afterwards,
and a real `danube-worker` beside a fake API and a real keyd (`stack`).

Every process a step starts has the workspace as `HOME` in its environment, and the
scenario driver (`process_scenarios.py`) names it on its command line, so teardown finds
them all by it, even the ones re-parented to init.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.keyd import make_home, remove_homes, spawn, wait_ready
from tests.support.stack import kill_everything_of
from tests.worker.fake_api import FakeApi
from tests.worker.process_scenarios import DRIVER, RESULT_PREFIX
from tests.worker.worker_stack import WorkerStack


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A job's workspace; at teardown, every process that names it is SIGKILLed by pid."""
    path = tmp_path / "workspace"
    path.mkdir(mode=0o700)
    yield path
    kill_everything_of(path)


@pytest.fixture
def scenario(workspace: Path) -> Callable[[str], dict[str, Any]]:
    """Runs one scenario of `process_scenarios.py` in its own subreaper process, in this
    test's workspace, and returns what it saw."""

    def run(name: str) -> dict[str, Any]:
        finished = subprocess.run(
            [sys.executable, str(DRIVER), name, str(workspace)],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert finished.returncode == 0, finished.stderr
        lines = [line for line in finished.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        assert len(lines) == 1, finished.stdout
        outcome: dict[str, Any] = json.loads(lines[0].removeprefix(RESULT_PREFIX))
        return outcome

    return run


@pytest.fixture
def stack() -> Iterator[WorkerStack]:
    """A fake API, a real keyd and a directory for a real worker (started by the test
    with `stack.start_worker()`); every process is killed by pid at teardown."""
    home = make_home()
    keyd = spawn(home)
    try:
        wait_ready(keyd)
        with FakeApi() as api:
            worker_stack = WorkerStack(api=api, keyd=keyd)
            worker_stack.token_file.write_text(api.worker_token + "\n")
            try:
                yield worker_stack
            finally:
                worker_stack.close()
    finally:
        keyd.kill()
        remove_homes([home])
