"""A response's head and body in one write to the socket.

uvicorn's httptools protocol writes a response's status line and headers when the app
sends `http.response.start`, and its body, separately, at `http.response.body`: two
`send(2)` calls, two TCP segments, and two wake-ups of the client, for every answer.
On loopback, each send does the receiving side's work too; profiled under `job_e2e`
(py-spy), the response writes were the largest single part of the API's event loop
(11 to 25 % of its samples), and a worker woke twice per answer.

`CoalescingTransport` wraps the connection's transport for the request cycles: a write
that is a whole response head is held, and the next write (the body, sent by the app in
the same turn of the loop) goes out joined to it. A head with no write after it (a
response streamed later) is written at the end of the loop's current turn, so nothing
waits longer than that; any other write, `close` and `abort` send what is held first, so
the bytes on the wire and their order are exactly uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

_HEAD_END: Final = b"\r\n\r\n"
_STATUS_LINE: Final = b"HTTP/1.1 "


class CoalescingTransport(asyncio.Transport):
    """`transport` (a connection's), with a response head held for its body."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._take_head()
            self._transport.write(head + data)
            return
        if isinstance(data, bytes) and data.endswith(_HEAD_END) and data.startswith(_STATUS_LINE):
            self._head = data
            self._flush_handle = self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Write the head held, if any."""
        head = self._head
        if head is not None:
            self._take_head()
            self._transport.write(head)

    def _take_head(self) -> None:
        self._head = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def writelines(self, list_of_data: Any) -> None:
        self.flush()
        self._transport.writelines(list_of_data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self.discard()  # an abort discards what is buffered
        self._transport.abort()

    def discard(self) -> None:
        """Drop the head held (the connection is lost: there is no one to write to)."""
        self._take_head()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()
