"""The worker's client of its node's API: the worker routes of DESIGN section 7, over one
keep-alive HTTP/1.1 connection with the worker's bearer token.

A small HTTP/1.1 client on asyncio's streams, in the worker's event loop: each request
of a job is on the job's critical path, and handing `http.client` calls to a thread and
back cost about 1 ms per request on a busy machine (4 requests per one-step job). It
speaks only what the API answers: a status line, headers, and a body by
`Content-Length`, chunked, or up to the connection's end. A request that fails on the
wire (connection refused or reset, a timeout, a malformed answer, a 502/503/504) raises
`ApiUnavailable`, which the caller retries; any other refusal raises `ApiRefused` with
the status and the problem's detail. Neither message ever holds the token.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from danube_shared.errors import DanubeError

REQUEST_TIMEOUT_S: Final = 30.0
# A claim long-polls for up to its `wait`; the socket waits that long plus this margin.
CLAIM_MARGIN_S: Final = 15.0
_RETRYABLE_STATUSES: Final = frozenset({502, 503, 504})
# Statuses that never carry a body (RFC 9112 section 6.3).
_NO_BODY: Final = frozenset({204, 304})
# Bodies of this size or less go out in the same write as the head.
_JOIN_BODY_BYTES: Final = 16 * 1024


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


class _BadAnswer(Exception):
    """The API's answer is not HTTP/1.1 this client can read."""


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
        self._ssl = ssl.create_default_context() if self._https else None
        authority = parts.netloc.rpartition("@")[2]
        self._head_lines = (
            f"Host: {authority}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n"
        )
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

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
        await self._call(
            "PATCH", f"/api/v1/jobs/{job_id}/steps/{position}", payload, read_body=False
        )

    async def append_log(self, job_id: str, position: int, offset: int, data: bytes) -> LogAppended:
        _, body = await self._call(
            "POST",
            f"/api/v1/jobs/{job_id}/steps/{position}/log?offset={offset}",
            raw=data,
        )
        return LogAppended(
            length=int(body["length"]), cancel_requested=bool(body["cancel_requested"])
        )

    async def finish(self, job_id: str, status: str, reason: str | None = None) -> None:
        payload: dict[str, Any] = {"status": status}
        if reason is not None:
            payload["reason"] = reason
        await self._call("POST", f"/api/v1/jobs/{job_id}/finish", payload, read_body=False)

    def close(self) -> None:
        self._drop_connection()

    def abort(self) -> None:
        """Break off the request in flight (a claim's long poll when the worker stops):
        its caller gets `ApiUnavailable` at once. Call it from the event loop's thread."""
        writer = self._writer
        if writer is not None:
            writer.transport.abort()

    async def _call(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        read_body: bool = True,
    ) -> tuple[int, dict[str, Any]]:
        """The answer's status and JSON object; with `read_body=False` the object of a
        success is left unparsed (`{}`): the worker does not use the step or the job the
        API answers a step update or a finish with (a job's JSON is ~15 µs to parse)."""
        if payload is not None:
            body, content_type = json.dumps(payload).encode(), "application/json"
        else:
            body, content_type = raw or b"", "application/octet-stream"
        target = self._prefix + path
        async with self._lock:
            try:
                async with asyncio.timeout(timeout_s):
                    status, data, keep_alive = await self._exchange(
                        method, target, body, content_type
                    )
            except (OSError, EOFError, TimeoutError, ValueError, _BadAnswer) as exc:
                # EOFError: asyncio.IncompleteReadError; ValueError: LimitOverrunError.
                self._drop_connection()
                raise ApiUnavailable(
                    f"{method} {target}: the API at {self._host}:{self._port} did not answer "
                    f"({type(exc).__name__})"
                ) from None
            except BaseException:
                # Cancelled halfway through: what is left on the connection is unknown.
                self._drop_connection()
                raise
            if not keep_alive:
                self._drop_connection()
        if status < 400 and not read_body:
            return status, {}
        parsed = _json_object(data)
        if status in _RETRYABLE_STATUSES:
            raise ApiUnavailable(f"{method} {target}: {status} {parsed.get('detail', '')}".rstrip())
        if status >= 400:
            detail = str(parsed.get("detail") or parsed.get("title") or "")
            raise ApiRefused(status, f"{method} {target}: {status} {detail}".rstrip(), parsed)
        return status, parsed

    async def _exchange(
        self, method: str, target: str, body: bytes, content_type: str
    ) -> tuple[int, bytes, bool]:
        """Send one request and read its whole answer: status, body, and whether the
        connection may carry the next request."""
        reader, writer = await self._connected()
        head = (
            f"{method} {target} HTTP/1.1\r\n{self._head_lines}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        if len(body) <= _JOIN_BODY_BYTES:
            writer.write(head + body)
        else:
            writer.write(head)
            writer.write(body)
        await writer.drain()
        status, headers, keep_alive = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        if status in _NO_BODY or method == "HEAD":
            return status, b"", keep_alive
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, await _read_chunked(reader), keep_alive
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise _BadAnswer("bad Content-Length")
            return status, await reader.readexactly(int(length)), keep_alive
        return status, await reader.read(), False  # the body ends with the connection

    async def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = self._reader, self._writer
        if reader is not None and writer is not None:
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            # The API closed the idle connection (its keep-alive timeout): a new one.
            self._drop_connection()
        reader, writer = await asyncio.open_connection(
            self._host, self._port, ssl=self._ssl, limit=_HEAD_LIMIT
        )
        self._reader, self._writer = reader, writer
        return reader, writer

    def _drop_connection(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is not None:
            writer.close()


# The longest head (status line and headers) read from the API.
_HEAD_LIMIT: Final = 64 * 1024


def _parse_head(raw: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers (names in lower case) and keep-alive of an answer's head."""
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise _BadAnswer("not an HTTP/1.x status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, colon, value = line.partition(":")
            if not colon:
                raise _BadAnswer("a header line without a colon")
            headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    return int(code), headers, keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise _BadAnswer("bad chunk size") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers, unused
            return bytes(body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise _BadAnswer("a chunk not ended by CRLF")


def _json_object(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}  # pyright: ignore[reportUnknownVariableType] -- JSON object
