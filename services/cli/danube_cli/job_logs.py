"""`danube logs JOB_ID [--follow]`: a job's step logs at a terminal, read from the API.

Each step's output is printed after a header line naming the step, in order. Following,
it reads each step's log from the offset it reached (`?offset=`, `X-Log-Length`,
`X-Log-Complete`) about once a second, and moves to the next step once a step is final
and read to its end, until the job is final. The token is `$DANUBE_TOKEN`, else the
admin token `danube up` wrote to `DIR/admin.token`. The standard library's HTTP client
is enough here: one request at a time, no dependency added to the CLI.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from danube_cli.home import Layout, resolve_home
from danube_shared.config import load_settings
from danube_shared.errors import ConfigError
from danube_shared.program import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

PROG: Final = "danube"
ADMIN_TOKEN_FILE: Final = "admin.token"  # noqa: S105 -- a file name, not a token
FOLLOW_INTERVAL_S: Final = 1.0
REQUEST_TIMEOUT_S: Final = 30.0
_FINAL_JOB: Final = frozenset({"succeeded", "failed", "cancelled"})


class LogsError(Exception):
    """The logs cannot be read; the message says why, for the person at the terminal."""


@dataclass(frozen=True, slots=True)
class LogPiece:
    data: bytes
    length: int
    complete: bool


class ApiReader:
    """GETs on the API with a bearer token."""

    def __init__(self, base_url: str, token: str) -> None:
        self._base_url = base_url.rstrip("/")
        self._token = token

    def _get(self, path: str, query: Mapping[str, str] | None = None) -> tuple[bytes, Any]:
        url = f"{self._base_url}/api/v1{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(  # noqa: S310 -- the URL is the configured API's
            url, headers={"Authorization": f"Bearer {self._token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310 -- as above
                return response.read(), response.headers
        except urllib.error.HTTPError as exc:
            raise LogsError(f"{exc.code} from the API: {_detail(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise LogsError(f"cannot reach the API at {self._base_url}: {exc}") from None

    def job(self, job_id: str) -> dict[str, Any]:
        body, _ = self._get(f"/jobs/{urllib.parse.quote(job_id, safe='')}")
        job: dict[str, Any] = json.loads(body)
        return job

    def log(self, job_id: str, position: int, offset: int) -> LogPiece:
        body, headers = self._get(
            f"/jobs/{urllib.parse.quote(job_id, safe='')}/steps/{position}/log",
            {"offset": str(offset)},
        )
        return LogPiece(
            data=body,
            length=int(headers.get("X-Log-Length", "0")),
            complete=headers.get("X-Log-Complete") == "true",
        )


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail", "no detail"))
    except (ValueError, AttributeError):
        return "no detail"


def read_token(home: Path, environ: Mapping[str, str]) -> str:
    """`$DANUBE_TOKEN`, else the token in `DIR/admin.token`."""
    if environ.get("DANUBE_TOKEN"):
        return environ["DANUBE_TOKEN"].strip()
    path = home / ADMIN_TOKEN_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise LogsError(
            f"no token: set DANUBE_TOKEN or run `danube up` to write {path} ({exc.strerror})"
        ) from None


class JobLogPrinter:
    """Prints a job's step logs in order, remembering how far it read."""

    def __init__(self, reader: ApiReader, job_id: str, out: BinaryIO) -> None:
        self._reader = reader
        self._job_id = job_id
        self._out = out
        self._step = 0  # the step being printed
        self._offset = 0  # bytes of it printed
        self._headed = False

    def advance(self, *, follow: bool) -> bool:
        """Print what is new; True once there is nothing more to wait for."""
        job = self._reader.job(self._job_id)
        steps: list[dict[str, Any]] = job["steps"]
        job_final = job["status"] in _FINAL_JOB
        while self._step < len(steps):
            step = steps[self._step]
            complete = self._drain(step)
            # A final step may still get the worker's last flush while the job runs, so
            # following moves on only once the next step has begun (or the job ended).
            next_begun = (
                self._step + 1 < len(steps) and steps[self._step + 1]["status"] != "pending"
            )
            if not follow or job_final or (complete and next_begun):
                self._step += 1
                self._offset = 0
                self._headed = False
                continue
            return False
        return True

    def _drain(self, step: dict[str, Any]) -> bool:
        if not self._headed:
            header = f"=== step {step['position']}: {step['name']} ===\n"
            self._out.write(header.encode())
            self._headed = True
        while True:
            piece = self._reader.log(self._job_id, int(step["position"]), self._offset)
            self._out.write(piece.data)
            self._offset += len(piece.data)
            if not piece.data or self._offset >= piece.length:
                self._out.flush()
                return piece.complete


def run_logs(
    config: Path | None,
    home: Path | None,
    job_id: str,
    *,
    follow: bool,
    out: BinaryIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """`danube logs JOB_ID [--follow] [--home DIR]`."""
    env = os.environ if environ is None else environ
    layout = Layout.for_home(resolve_home(home, env), config)
    try:
        settings = load_settings(layout.config if layout.config.exists() else config)
        reader = ApiReader(settings.worker_api_url(), read_token(layout.home, env))
        printer = JobLogPrinter(reader, job_id, out or sys.stdout.buffer)
        while not printer.advance(follow=follow):
            time.sleep(FOLLOW_INTERVAL_S)
    except ConfigError as exc:
        print(f"{PROG}: config invalid: {exc}", file=sys.stderr)  # noqa: T201 -- a CLI reports on stderr
        return EXIT_USAGE
    except LogsError as exc:
        print(f"{PROG}: logs: {exc}", file=sys.stderr)  # noqa: T201 -- a CLI reports on stderr
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK
