"""The HTTP protocol `danube-api` serves with: uvicorn's httptools protocol with two
limits on request heads that neither uvicorn nor httptools enforces (DESIGN 7).

- A head over `MAX_HEAD_BYTES` (64 KiB) is answered 431 and the connection closed.
  (uvicorn's h11 protocol can bound a head, but answers a bare 400, and cost about a
  third of `api_create_job`'s rate when measured.)
- A client that has not sent a whole head within `HEAD_TIMEOUT_S` (10 s) of connecting,
  or of its previous response ending, is disconnected: a slow sender holds no
  connection open for long (the `limit_concurrency` bound would otherwise be cheap to
  exhaust).

Only the head is counted, in the parser's own callbacks, so a body costs nothing extra.
"""

from __future__ import annotations

import asyncio
import json
from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from danube_api.coalescing_transport import CoalescingTransport

MAX_HEAD_BYTES: Final = 64 * 1024
HEAD_TIMEOUT_S: Final = 10.0


def _too_large_response() -> bytes:
    body = json.dumps(
        {
            "type": "urn:danube:problem:request_header_fields_too_large",
            "title": "Request header fields too large",
            "status": 431,
            "detail": f"the request head is over {MAX_HEAD_BYTES} bytes",
        }
    ).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


TOO_LARGE: Final = _too_large_response()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the same two limits. httptools hands every byte
    of a head to `on_url` and `on_header` as it parses (it buffers none), so summing
    those is the head's size; an oversized head never starts a request."""

    head_timeout_s: float = HEAD_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes: int = 0
    _too_large: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override] -- as uvicorn declares it
        super().connection_made(transport)
        # Each response's head and body in one send (`coalescing_transport`); flow
        # control keeps the connection's own transport.
        self.transport = CoalescingTransport(transport, self.loop)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if isinstance(self.transport, CoalescingTransport):
            self.transport.discard()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._too_large and not self.transport.is_closing():
            self._disarm_head_timer()
            self.transport.write(TOO_LARGE)
            self.transport.close()

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        if not self._too_large:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._too_large:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._too_large = True

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
