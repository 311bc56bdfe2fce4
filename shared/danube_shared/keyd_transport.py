"""How Danube's clients reach keyd: the socket-file check, reply decoding, and the
DEALER connection that carries many concurrent requests.

`check_socket_file` refuses a socket file that is not a socket owned by keyd's uid (by
default the owner of `keyd.socket_dir`, which keyd requires to be its own; pass
`expected_uid` to pin it), so that a process that managed to put a socket there cannot
collect plaintexts. `decode_reply` turns a reply frame into its typed reply or raises
`KeydRejected(reason, message)` for an error reply and `KeydUnavailable` for a frame
this client cannot read. `KeydConnection` is the DEALER socket with a deadline per
request, reconnection and the pending requests' futures.

Nothing here connects or builds a context at import time; this module does not import
pydantic, so a worker can use it without Danube's configuration.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zmq
import zmq.asyncio

from danube_shared.errors import KeydRejected, KeydUnavailable
from danube_shared.keyd_protocol import (
    PROTOCOL_VERSION,
    ErrorReply,
    Reply,
    ReplyHead,
    Request,
    endpoint,
)

__all__ = ["KeydConnection", "check_socket_file", "decode_reply"]

ReplyT = TypeVar("ReplyT", bound=Reply)
_ENCODER = msgspec.msgpack.Encoder()
_HEAD_DECODER = msgspec.msgpack.Decoder(ReplyHead)
_ERROR_DECODER = msgspec.msgpack.Decoder(ErrorReply)


def check_socket_file(path: Path, expected_uid: int | None = None) -> os.stat_result:
    """The socket file's stat if it is a socket owned by `expected_uid` (default: the
    owner of its directory); raises `KeydUnavailable` saying what is wrong otherwise."""
    try:
        if expected_uid is None:
            expected_uid = path.parent.stat().st_uid
        info = path.lstat()
    except FileNotFoundError:
        raise KeydUnavailable(f"keyd socket {path} does not exist; is keyd running?") from None
    except OSError as exc:
        raise KeydUnavailable(f"keyd socket {path} cannot be examined: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise KeydUnavailable(f"{path} is not a socket; it is not keyd's, refusing to use it")
    if info.st_uid != expected_uid:
        raise KeydUnavailable(
            f"keyd socket {path} is owned by uid {info.st_uid}, not keyd's uid {expected_uid}; "
            "refusing to use it"
        )
    return info


def decode_reply(frame: bytes, decoder: msgspec.msgpack.Decoder[ReplyT], path: Path) -> ReplyT:
    """The reply in `frame`, from keyd at `path`; raises `KeydRejected` for an error reply
    and `KeydUnavailable` for another protocol version or an unreadable frame."""
    try:
        head = _HEAD_DECODER.decode(frame)
        if head.v != PROTOCOL_VERSION:
            raise KeydUnavailable(
                f"keyd at {path} speaks protocol version {head.v}, this client {PROTOCOL_VERSION}"
            )
        if not head.ok:
            error = _ERROR_DECODER.decode(frame)
            raise KeydRejected(error.error, error.message)
        return decoder.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise KeydUnavailable(f"keyd at {path} sent a reply this client cannot read") from None


class KeydConnection:
    """One DEALER socket to keyd at `path`, shared by every request of the process.

    Concurrent coroutines each await their own reply, matched by request id by a single
    reader task. Each request has a deadline of `timeout_s`. The connection is made on
    first use, in the running event loop, and remade when needed: when the socket file is
    replaced (keyd restarted), and after a request timed out with nothing heard from keyd
    since it was sent (the Lazy Pirate reset: close with LINGER 0, reconnect on the next
    request). Requests are never resent behind the caller's back.

    `close()` is a coroutine: it fails pending requests, stops the reader and closes the
    socket and its ZeroMQ context. Use the connection from one event loop at a time.
    """

    def __init__(self, path: Path, timeout_s: float, *, expected_uid: int | None = None) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self._expected_uid = expected_uid
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._socket_file: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._last_heard = 0.0
        self._decoders: dict[type[Reply], msgspec.msgpack.Decoder[Any]] = {}

    def next_id(self) -> int:
        """A request id no other request on this connection carries."""
        return next(self._ids)

    async def call(self, request: Request, reply_type: type[ReplyT]) -> ReplyT:
        """Send `request` and await its reply, decoded as `reply_type`.

        Raises `KeydUnavailable` past the deadline or when the connection is lost, and
        `KeydRejected` for an error reply."""
        loop = asyncio.get_running_loop()
        sock = self._connected(loop)
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending[request.id] = future
        sent_at = loop.time()
        try:
            async with asyncio.timeout(self._timeout_s):
                # One call, so concurrent requests never interleave their frames.
                await sock.send_multipart([b"", _ENCODER.encode(request)])  # pyright: ignore[reportUnknownMemberType] -- pyzmq types the parts as Sequence[Any]
                frame = await future
        except TimeoutError:
            if self._last_heard < sent_at:
                self._reset(f"keyd at {self.path} stopped answering")
            raise KeydUnavailable(
                f"keyd is not answering on {self.path} (no reply within "
                f"{round(self._timeout_s * 1000)} ms)"
            ) from None
        except zmq.ZMQError:
            raise KeydUnavailable(f"the connection to keyd at {self.path} was closed") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller cancelled us: that must propagate
            # Closing the socket (another request's reset) cancels what waits on it.
            raise KeydUnavailable(
                f"the connection to keyd at {self.path} was reset while this request "
                "waited to be sent"
            ) from None
        finally:
            self._pending.pop(request.id, None)
            _settle(future)
        decoder = self._decoders.get(reply_type)
        if decoder is None:
            decoder = self._decoders[reply_type] = msgspec.msgpack.Decoder(reply_type)
        return decode_reply(frame, decoder, self.path)

    async def close(self) -> None:
        reader = self._reader
        self._reset("the keyd client was closed")
        if reader is not None and reader.get_loop() is asyncio.get_running_loop():
            await asyncio.gather(reader, return_exceptions=True)
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    def _connected(self, loop: asyncio.AbstractEventLoop) -> zmq.asyncio.Socket:
        """The socket to send on, made or remade as needed; raises `KeydUnavailable` at
        once if the socket file is absent or not keyd's."""
        try:
            info = check_socket_file(self.path, self._expected_uid)
        except KeydUnavailable:
            self._reset(f"keyd socket {self.path} is gone")
            raise
        socket_file = (info.st_dev, info.st_ino)
        if self._socket is not None and (
            socket_file != self._socket_file or loop is not self._loop
        ):
            self._reset(f"keyd at {self.path} restarted")
        if self._socket is None:
            if self._context is None:
                self._context = zmq.asyncio.Context()
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Queue only on a completed connection: while keyd is down, a request waits
            # for its deadline instead of reaching a later keyd long after it was given up.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(endpoint(self.path))
            self._socket = sock
            self._socket_file = socket_file
            self._loop = loop
            self._reader = loop.create_task(self._read(sock), name="keyd-control-reader")
        return self._socket

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError:
                return  # the socket was closed under us
            if len(frames) != 2 or frames[0]:
                continue
            try:
                request_id = _HEAD_DECODER.decode(frames[1]).id
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                continue  # not a reply from keyd; the reader must outlive any frame
            self._last_heard = loop.time()
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_result(frames[1])

    def _reset(self, why: str) -> None:
        """Drop the connection: fail what is pending, stop the reader, close with LINGER 0."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(KeydUnavailable(why))
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._socket_file = None


def _settle(future: asyncio.Future[bytes]) -> None:
    """Leave a request's future finished and its outcome read, so that asyncio never
    reports an exception that a reset set on it but nobody awaited."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()
