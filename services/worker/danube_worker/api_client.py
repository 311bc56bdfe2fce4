"""The worker's client of its node's API: the worker routes of DESIGN section 7, over one
keep-alive HTTP connection with the worker's bearer token.

The standard library's `http.client`, called from a thread: a worker makes a few requests
a second at most, the API is on the same node, and no third-party HTTP client is worth a
dependency for that. A request that fails on the wire (connection refused or reset, a
timeout, a 502/503/504) raises `ApiUnavailable`, which the caller retries; any other
refusal raises `ApiRefused` with the status and the problem's detail. Neither message ever
holds the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from danube_shared.errors import DanubeError

REQUEST_TIMEOUT_S: Final = 30.0
# A claim long-polls for up to its `wait`; the socket waits that long plus this margin.
CLAIM_MARGIN_S: Final = 15.0
_RETRYABLE_STATUSES: Final = frozenset({502, 503, 504})


class ApiUnavailable(DanubeError):
    """The API could not be reached or could not serve the request now; try again."""

    code = "api_unavailable"


class ApiRefused(DanubeError):
    """The API refused the request (a 4xx, or a 5xx other than 502/503/504)."""

    code = "api_refused"

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


@dataclass(frozen=True, slots=True)
class Claim:
    """A job this worker has just claimed, and the job's token (shown only here)."""

    job: dict[str, Any]
    token: str

    @property
    def job_id(self) -> str:
        return str(self.job["id"])


@dataclass(frozen=True, slots=True)
class LogAppended:
    length: int
    cancel_requested: bool


class ApiClient:
    """One worker's connection to its API. Safe to share between tasks of one event loop:
    requests are serialised on a lock, as one HTTP/1.1 connection requires."""

    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DanubeError(f"worker.api_url {base_url!r} is not an http(s) URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self.base_url = base_url
        """The API's URL, as configured (it holds no credential)."""
        self._authorization = f"Bearer {token}"
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None

    async def claim(self, wait_s: int) -> Claim | None:
        status, body = await self._call(
            "POST", f"/api/v1/worker/claim?wait={wait_s}", timeout_s=wait_s + CLAIM_MARGIN_S
        )
        if status == 204:
            return None
        return Claim(job=body["job"], token=str(body["token"]))

    async def heartbeat(self, job_id: str) -> bool:
        """Keep the job's lease; answers whether cancel was requested."""
        _, body = await self._call("POST", f"/api/v1/jobs/{job_id}/heartbeat")
        return bool(body["cancel_requested"])

    async def update_step(
        self, job_id: str, position: int, status: str, exit_code: int | None = None
    ) -> None:
        payload: dict[str, Any] = {"status": status}
        if exit_code is not None:
            payload["exit_code"] = exit_code
        await self._call("PATCH", f"/api/v1/jobs/{job_id}/steps/{position}", payload)

    async def append_log(self, job_id: str, position: int, offset: int, data: bytes) -> LogAppended:
        _, body = await self._call(
            "POST",
            f"/api/v1/jobs/{job_id}/steps/{position}/log?offset={offset}",
            raw=data,
        )
        return LogAppended(
            length=int(body["length"]), cancel_requested=bool(body["cancel_requested"])
        )

    async def finish(self, job_id: str, status: str, reason: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"status": status}
        if reason is not None:
            payload["reason"] = reason
        _, body = await self._call("POST", f"/api/v1/jobs/{job_id}/finish", payload)
        return body

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def abort(self) -> None:
        """Break off the request in flight, from any thread (a claim's long poll when the
        worker stops): its caller gets `ApiUnavailable` at once."""
        connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def _call(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> tuple[int, dict[str, Any]]:
        if payload is not None:
            body, content_type = json.dumps(payload).encode(), "application/json"
        else:
            body, content_type = raw or b"", "application/octet-stream"
        return await asyncio.to_thread(
            self._request, method, self._prefix + path, body, content_type, timeout_s
        )

    def _request(
        self, method: str, path: str, body: bytes, content_type: str, timeout_s: float
    ) -> tuple[int, dict[str, Any]]:
        headers = {
            "Authorization": self._authorization,
            "Content-Type": content_type,
            "Accept": "application/json",
        }
        with self._lock:
            try:
                connection = self._connected(timeout_s)
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                status, data = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise ApiUnavailable(
                    f"{method} {path}: the API at {self._host}:{self._port} did not answer "
                    f"({type(exc).__name__})"
                ) from None
            if response.will_close:
                self._drop_connection()
        parsed = _json_object(data)
        if status in _RETRYABLE_STATUSES:
            raise ApiUnavailable(f"{method} {path}: {status} {parsed.get('detail', '')}".rstrip())
        if status >= 400:
            detail = str(parsed.get("detail") or parsed.get("title") or "")
            raise ApiRefused(status, f"{method} {path}: {status} {detail}".rstrip(), parsed)
        return status, parsed

    def _connected(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s, context=ssl.create_default_context()
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=timeout_s
                )
        else:
            self._connection.timeout = timeout_s
            if self._connection.sock is not None:
                self._connection.sock.settimeout(timeout_s)
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _json_object(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}  # pyright: ignore[reportUnknownVariableType] -- JSON object
