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
import contextlib
import itertools
import os
import stat
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import msgspec
import zmq

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
    return _check_socket_file(path, str(path), str(path.parent), expected_uid)


def _check_socket_file(
    path: Path, path_text: str, directory_text: str, expected_uid: int | None
) -> os.stat_result:
    """`check_socket_file` on paths already made text: `os.stat` of a string, not of a
    `Path` whose `parent` is built and formatted again at every request."""
    try:
        if expected_uid is None:
            expected_uid = os.stat(directory_text).st_uid  # noqa: PTH116 -- a str, stat per request
        info = os.lstat(path_text)
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


# Plain integers for the socket's flags and events: pyzmq's enums cost a Python-level
# enum operation for every `|` and `&`, a tenth of a request's time on the client.
_NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE: Final = int(zmq.SNDMORE)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)


class KeydConnection:
    """One DEALER socket to keyd at `path`, shared by every request of the process.

    Concurrent coroutines each await their own reply, matched by request id. Each request
    has a deadline of `timeout_s`. The connection is made on first use, in the running
    event loop, and remade when needed: when the socket file is replaced (keyd
    restarted), and after a request timed out with nothing heard from keyd since it was
    sent (the Lazy Pirate reset: close with LINGER 0, reconnect on the next request).
    Requests are never resent behind the caller's back.

    The socket is a plain (blocking-API) ZeroMQ socket used only with `NOBLOCK`, watched
    through its file descriptor with the event loop's `add_reader`: a request is sent at
    once from the caller's coroutine and its reply handed to the caller's future from the
    reader callback. pyzmq's asyncio socket does the same with a future, an enum
    operation and a callback more at every step; on this path (every claim, finish and
    secrets fetch) that was more than half of the client's time. ZeroMQ's descriptor is
    edge-triggered: it signals "look at `EVENTS`", and any operation on the socket may
    consume that signal, so `EVENTS` is read again after every send and every receive.

    `close()` is a coroutine: it fails pending requests and closes the socket and its
    ZeroMQ context. Use the connection from one event loop at a time.
    """

    def __init__(self, path: Path, timeout_s: float, *, expected_uid: int | None = None) -> None:
        self.path = path
        self._path_text = str(path)
        self._directory_text = str(path.parent)
        self._timeout_s = timeout_s
        self._expected_uid = expected_uid
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._socket_file: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        # Requests waiting to be sent: no completed connection yet (`IMMEDIATE`).
        self._writable: list[asyncio.Future[None]] = []
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
        payload = _ENCODER.encode(request)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._send(loop, sock, payload)
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
        finally:
            self._pending.pop(request.id, None)
            _settle(future)
        decoder = self._decoders.get(reply_type)
        if decoder is None:
            decoder = self._decoders[reply_type] = msgspec.msgpack.Decoder(reply_type)
        return decode_reply(frame, decoder, self.path)

    async def close(self) -> None:
        self._reset("the keyd client was closed")
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    async def _send(
        self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket[bytes], payload: bytes
    ) -> None:
        """Queue the request's two frames (REQ-style: an empty delimiter first) on
        `sock`, waiting while it has no completed connection. ZeroMQ takes a multipart
        message whole or not at all, so concurrent requests never interleave."""
        while True:
            if sock is not self._socket:
                # Reset while this request waited to be sent (another request timed out).
                raise KeydUnavailable(
                    f"the connection to keyd at {self.path} was reset while this request "
                    "waited to be sent"
                )
            try:
                sock.send(b"", _SNDMORE | _NOBLOCK)
            except zmq.Again:
                writable: asyncio.Future[None] = loop.create_future()
                self._writable.append(writable)
                try:
                    await writable
                finally:
                    with contextlib.suppress(ValueError):
                        self._writable.remove(writable)
                continue
            sock.send(payload, _NOBLOCK)
            # The send may have taken the descriptor's signal for a reply already here.
            self._on_events()
            return

    def _connected(self, loop: asyncio.AbstractEventLoop) -> zmq.Socket[bytes]:
        """The socket to send on, made or remade as needed; raises `KeydUnavailable` at
        once if the socket file is absent or not keyd's."""
        try:
            info = _check_socket_file(
                self.path, self._path_text, self._directory_text, self._expected_uid
            )
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
                self._context = zmq.Context()
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Queue only on a completed connection: while keyd is down, a request waits
            # for its deadline instead of reaching a later keyd long after it was given up.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(endpoint(self.path))
            self._socket = sock
            self._socket_file = socket_file
            self._loop = loop
            loop.add_reader(sock.fileno(), self._on_events)
        return self._socket

    def _on_events(self) -> None:
        """Everything the socket has for us now: replies to their requests' futures, and
        a writable socket to the requests waiting to be sent."""
        sock = self._socket
        loop = self._loop
        while sock is not None and loop is not None:
            try:
                events = cast(int, sock.getsockopt(_EVENTS))
            except zmq.ZMQError:
                return  # closed under us
            if events & _POLLOUT and self._writable:
                for writable in self._writable:
                    if not writable.done():
                        writable.set_result(None)
            if not events & _POLLIN:
                return
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.ZMQError:
                return  # nothing after all (zmq.Again), or closed under us
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
        """Drop the connection: fail what is pending, stop watching the socket, close it
        with LINGER 0."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(KeydUnavailable(why))
        writable, self._writable = self._writable, []
        for waiter in writable:
            if not waiter.done():
                waiter.set_result(None)  # the sender sees the reset and fails
        sock, self._socket = self._socket, None
        if sock is not None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.remove_reader(sock.fileno())
            sock.close(linger=0)
        self._socket_file = None


def _settle(future: asyncio.Future[bytes]) -> None:
    """Leave a request's future finished and its outcome read, so that asyncio never
    reports an exception that a reset set on it but nobody awaited."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()
