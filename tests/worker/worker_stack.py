"""A real `danube-worker` process against the fake API (`fake_api.py`) and a real keyd.

Each stack lives in a short directory under /tmp (keyd's ipc socket paths are limited to
107 bytes): the worker's config, token file, log and workdir. The worker is a real
process started from its console script, so it is a child subreaper of its own and the
test process is not. At teardown the worker is killed by its pid, then every process
that names the stack's directory (in its command line or environment: every step has
its workspace, under the directory, as `HOME`) is killed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from danube_shared.config import KeydSettings
from danube_shared.keyd_control_client import KeydControlClient
from tests.support.isolation import program_environment
from tests.support.keyd import KeydProcess, kill_every, spawn, wait_ready
from tests.support.stack import kill_everything_of
from tests.worker.fake_api import FakeApi, FakeJob

WORKER = Path(sys.executable).with_name("danube-worker")
# Hang guards only: nothing asserts how fast anything is.
JOB_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
WORKER_ONLY_VARIABLE = "DNB_TEST_WORKER_ONLY"
T = TypeVar("T")


@dataclass
class WorkerStack:
    api: FakeApi
    keyd: KeydProcess
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(dir="/tmp", prefix="dw")))
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list[subprocess.Popen[bytes]])
    restarted_keyds: list[KeydProcess] = field(default_factory=list[KeydProcess])

    @property
    def config_path(self) -> Path:
        return self.root / "danube.toml"

    @property
    def token_file(self) -> Path:
        return self.root / "worker.token"

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    @property
    def log_path(self) -> Path:
        return self.root / "worker.log"

    def write_config(self, keyd_timeout_ms: int = 500, **worker: Any) -> None:
        """The worker's config; keyword arguments override its [worker] section."""
        values: dict[str, Any] = {
            "api_url": self.api.url,
            "token_file": str(self.token_file),
            "workdir": str(self.workdir),
            "kill_grace_s": 1,
            "heartbeat_s": 0.5,
            "claim_wait_s": 1,
            **worker,
        }
        keyd = {
            "socket_dir": str(self.keyd.home.socket_dir),
            "request_timeout_ms": keyd_timeout_ms,
        }
        lines = ["[log]", 'level = "debug"', "[keyd]"]
        # JSON's strings and numbers are valid TOML values.
        lines += [f"{name} = {json.dumps(value)}" for name, value in keyd.items()]
        lines += ["[worker]"]
        lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start_worker(self) -> subprocess.Popen[bytes]:
        if not self.config_path.exists():
            self.write_config()
        env = program_environment()
        env[WORKER_ONLY_VARIABLE] = "only-the-worker-sees-this"
        with self.log_path.open("ab") as log:
            worker = subprocess.Popen(
                [str(WORKER), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        self.workers.append(worker)
        return worker

    def restart_keyd(self) -> None:
        """A new keyd in the same home (the old one must be dead): an empty cache."""
        keyd = spawn(self.keyd.home)
        self.restarted_keyds.append(keyd)
        wait_ready(keyd)
        self.keyd = keyd

    def load_secrets(self, job: FakeJob, secrets: Mapping[str, bytes]) -> None:
        """Put the job's secrets into keyd, as the API does at claim: encrypted by keyd
        under a context each, then loaded with the job token's hash."""

        async def load() -> None:
            client = KeydControlClient(KeydSettings(socket_dir=self.keyd.home.socket_dir))
            try:
                names = list(secrets)
                contexts = [f"secret:{uuid.uuid4().hex}" for _ in names]
                ciphertexts = await client.encrypt(
                    [
                        (secrets[name], context)
                        for name, context in zip(names, contexts, strict=True)
                    ]
                )
                await client.job_load(
                    job.id,
                    hashlib.sha256(job.token.encode()).digest(),
                    600,
                    list(zip(names, ciphertexts, contexts, strict=True)),
                )
            finally:
                await client.close()

        asyncio.run(load())

    def wait_finished(self, job: FakeJob) -> FakeJob:
        if not job.finished.wait(JOB_TIMEOUT_S):
            raise AssertionError(f"job not finished in {JOB_TIMEOUT_S} s:\n{self.worker_log()}")
        return job

    def worker_log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def worker_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for line in self.worker_log().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def close(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
            worker.wait(EXIT_TIMEOUT_S)
        kill_everything_of(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        kill_every(self.restarted_keyds)


def wait_for(condition: Callable[[], T], what: str, timeout: float = JOB_TIMEOUT_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
