"""A small in-process stand-in for the API's worker routes (DESIGN section 7), so that a
real `danube-worker` can be tested before and apart from the real API.

It serves, on a free loopback port, in a thread of the test process:

- `POST /api/v1/worker/claim?wait=S`: the oldest queued job (200 with the job and its
  token) or 204 after waiting up to S seconds;
- `POST /api/v1/jobs/{id}/heartbeat`: `{"cancel_requested": bool}`;
- `PATCH /api/v1/jobs/{id}/steps/{position}`: step status and exit code;
- `POST /api/v1/jobs/{id}/steps/{position}/log?offset=N`: the append rule of DESIGN 7
  (a repeat is a 200 no-op; a gap is a 409 problem with the stored length);
- `POST /api/v1/jobs/{id}/finish`: the job's status and reason; steps not final become
  `skipped`.

Every request is kept whole (method, path, headers, body), so a test can search all
the worker sent for a secret. `refuse_step_updates(n)` answers the next n step PATCHes
409. Faults of the log route: `fail_log_appends(n)` answers the
next n appends 503 without storing them, `lose_log_answers(n)` stores the next n and
answers 503 all the same (the answer lost on the way), and `strict_repeats` makes a
repeat a 409 naming the stored length, as a stricter API might.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

FINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})


@dataclass
class Received:
    """One request as the fake API received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def everything(self) -> bytes:
        head = "\n".join(f"{name}: {value}" for name, value in self.headers.items())
        return f"{self.method} {self.path}\n{head}\n\n".encode() + self.body


@dataclass
class FakeStep:
    position: int
    name: str
    command: str
    timeout_s: int | None
    status: str = "pending"
    exit_code: int | None = None
    log: bytearray = field(default_factory=bytearray)
    updates: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        step: dict[str, Any] = {
            "id": f"step-{self.position}",
            "position": self.position,
            "name": self.name,
            "command": self.command,
            "status": self.status,
            "exit_code": self.exit_code,
        }
        if self.timeout_s is not None:
            step["timeout_s"] = self.timeout_s
        return step


@dataclass
class FakeJob:
    id: str
    pipeline_id: str
    number: int
    token: str
    steps: list[FakeStep]
    status: str = "pending"
    reason: str | None = None
    cancel_requested: bool = False
    finished: threading.Event = field(default_factory=threading.Event)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline_id": self.pipeline_id,
            "number": self.number,
            "status": self.status,
            "reason": self.reason,
            "cancel_requested": self.cancel_requested,
            "worker_id": "worker-1",
            "node": "test",
            "steps": [step.public() for step in self.steps],
        }

    def log_of(self, position: int) -> bytes:
        return bytes(self.steps[position].log)


class FakeApi:
    """The worker routes over a real HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self.worker_token = "dnb_w_" + secrets.token_urlsafe(32)
        self.received: list[Received] = []
        self.jobs: dict[str, FakeJob] = {}
        self._queue: list[FakeJob] = []
        self._lock = threading.Condition()
        self._failing_appends = 0
        self._lost_answers = 0
        self._refused_updates = 0
        self.strict_repeats = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeApi:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    # What a test does.

    def queue_job(self, steps: list[dict[str, Any]]) -> FakeJob:
        """A pending job with these steps (`name`, `command`, optional `timeout_s`)."""
        job = FakeJob(
            id=uuid.uuid4().hex,
            pipeline_id=uuid.uuid4().hex,
            number=len(self.jobs) + 1,
            token="dnb_j_" + secrets.token_urlsafe(32),
            steps=[
                FakeStep(i, step["name"], step["command"], step.get("timeout_s"))
                for i, step in enumerate(steps)
            ],
        )
        with self._lock:
            self.jobs[job.id] = job
            self._queue.append(job)
            self._lock.notify_all()
        return job

    def request_cancel(self, job: FakeJob) -> None:
        with self._lock:
            job.cancel_requested = True

    def fail_log_appends(self, count: int) -> None:
        """Answer the next `count` log appends 503, storing nothing."""
        with self._lock:
            self._failing_appends = count

    def lose_log_answers(self, count: int) -> None:
        """Store the next `count` log appends, then answer them 503."""
        with self._lock:
            self._lost_answers = count

    def refuse_step_updates(self, count: int) -> None:
        """Answer the next `count` step PATCHes 409, as for a job that has ended."""
        with self._lock:
            self._refused_updates = count

    def everything_received(self) -> bytes:
        with self._lock:
            return b"\n".join(request.everything() for request in self.received)

    def appends(self, job: FakeJob, position: int) -> list[tuple[int, bytes]]:
        """(offset, body) of every append to a step's log, in arrival order."""
        prefix = f"/api/v1/jobs/{job.id}/steps/{position}/log?"
        with self._lock:
            return [
                (int(parse_qs(urlsplit(r.path).query)["offset"][0]), r.body)
                for r in self.received
                if r.method == "POST" and r.path.startswith(prefix)
            ]

    # The routes.

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any] | None]:
        url = urlsplit(path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        if method == "POST" and url.path == "/api/v1/worker/claim":
            return self._claim(float(query.get("wait", "0")))
        route = re.fullmatch(r"/api/v1/jobs/(\w+)/(heartbeat|finish|steps/(\d+)(/log)?)", url.path)
        if route is None:
            return 404, _problem(404, "no such route")
        with self._lock:
            job = self.jobs.get(route.group(1))
            if job is None or job.status == "pending":
                return 404, _problem(404, "no such job")
            if route.group(2) == "heartbeat" and method == "POST":
                return 200, {"cancel_requested": job.cancel_requested}
            if route.group(2) == "finish" and method == "POST":
                return self._finish(job, json.loads(body))
            return self._step_route(
                job, method, int(route.group(3)), route.group(4), query=query, body=body
            )

    def _step_route(
        self,
        job: FakeJob,
        method: str,
        position: int,
        log: str | None,
        *,
        query: dict[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, Any] | None]:
        if position >= len(job.steps):
            return 404, _problem(404, "no such step")
        step = job.steps[position]
        if log and method == "POST":
            return self._append(job, step, int(query["offset"]), body)
        if not log and method == "PATCH":
            if self._refused_updates > 0:
                self._refused_updates -= 1
                return 409, _problem(409, "the job is not running (injected)")
            update = json.loads(body)
            step.updates.append(update)
            step.status = update["status"]
            step.exit_code = update.get("exit_code")
            return 200, step.public()
        return 405, _problem(405, "method not allowed")

    def _claim(self, wait_s: float) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            self._lock.wait_for(lambda: bool(self._queue), timeout=wait_s)
            if not self._queue:
                return 204, None
            job = self._queue.pop(0)
            job.status = "running"
            return 200, {"job": job.public(), "token": job.token}

    def _append(
        self, job: FakeJob, step: FakeStep, offset: int, body: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        if self._failing_appends > 0:
            self._failing_appends -= 1
            return 503, _problem(503, "log storage unavailable (injected)")
        if job.status != "running":
            return 409, _problem(409, "the job is finished")
        stored = len(step.log)
        repeat = offset < stored and step.log[offset : offset + len(body)] == body
        if offset == stored:
            step.log += body
        elif not repeat or self.strict_repeats:
            problem = _problem(409, f"offset {offset} does not follow the stored length {stored}")
            problem["length"] = stored
            return 409, problem
        if self._lost_answers > 0:
            self._lost_answers -= 1
            return 503, _problem(503, "answer lost (injected)")
        return 200, {"length": len(step.log), "cancel_requested": job.cancel_requested}

    def _finish(self, job: FakeJob, update: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        if job.status != "running":
            return 409, _problem(409, "the job is finished")
        job.status = update["status"]
        job.reason = update.get("reason")
        for step in job.steps:
            if step.status not in FINAL:
                step.status = "skipped"
        job.finished.set()
        return 200, job.public()


def _problem(status: int, detail: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": "error", "status": status, "detail": detail}


def _handler_for(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the base class's name
            """Quiet: the test reads `received` instead."""

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with api._lock:
                api.received.append(
                    Received(self.command, self.path, dict(self.headers.items()), body)
                )
            if self.headers.get("Authorization") != f"Bearer {api.worker_token}":
                status, answer = 401, _problem(401, "bad token")
            else:
                status, answer = api.handle(self.command, self.path, body)
            data = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(status)
            if data:
                content_type = "application/problem+json" if status >= 400 else "application/json"
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(data)

        do_POST = do_PATCH = _serve  # noqa: N815 -- http.server's naming

    return Handler
