"""Clients of keyd: `KeydControlClient` for the API, `fetch_job_secrets` for workers.

Both check, before every connection, that the socket file is a socket owned by keyd's uid
(by default the owner of `keyd.socket_dir`, which keyd requires to be its own; pass
`expected_uid` to pin it), so that a process that managed to put a socket there cannot
collect plaintexts. Both raise `KeydUnavailable` when keyd is absent or silent past the
deadline, and `KeydRejected(reason, message)` when keyd answers with an error reply.

Nothing here connects or builds a context at import time; this module does not import
pydantic, so a worker can use it without Danube's configuration.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import msgspec
import zmq
import zmq.asyncio

from danube_shared.errors import KeydRejected, KeydUnavailable
from danube_shared.keyd_protocol import (
    PROTOCOL_VERSION,
    DecryptItem,
    DecryptRequest,
    EncryptItem,
    EncryptRequest,
    ErrorReply,
    ItemsReply,
    JobDropReply,
    JobDropRequest,
    JobLoadReply,
    JobLoadRequest,
    JobSecret,
    JobSecretsReply,
    JobSecretsRequest,
    PingReply,
    PingRequest,
    Reply,
    ReplyHead,
    Request,
    StatsReply,
    StatsRequest,
    control_socket_path,
    endpoint,
    token_sha256,
    worker_socket_path,
)

if TYPE_CHECKING:
    from danube_shared.config import KeydSettings, Settings

__all__ = [
    "KeydControl",
    "KeydControlClient",
    "PingReply",
    "fetch_job_secrets",
    "fetch_job_secrets_async",
    "token_sha256",
]

_ReplyT = TypeVar("_ReplyT", bound=Reply)
_ENCODER = msgspec.msgpack.Encoder()
_HEAD_DECODER = msgspec.msgpack.Decoder(ReplyHead)
_ERROR_DECODER = msgspec.msgpack.Decoder(ErrorReply)
_DEFAULT_TIMEOUT_MS = 2000


class KeydControl(Protocol):
    """What the API needs from keyd; `KeydControlClient` is the real one, tests may fake it."""

    async def ping(self) -> PingReply: ...

    async def encrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]: ...

    async def decrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]: ...

    async def job_load(
        self,
        job_id: str,
        token_sha256: bytes,
        ttl_s: int,
        secrets: Sequence[tuple[str, bytes, str]],
    ) -> int: ...

    async def job_drop(self, job_id: str) -> bool: ...

    async def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


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


def _reply_or_raise(frame: bytes, decoder: msgspec.msgpack.Decoder[_ReplyT], path: Path) -> _ReplyT:
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


class KeydControlClient:
    """The API's connection to keyd's control socket.

    One DEALER socket carries every request of the process; concurrent coroutines each
    await their own reply, matched by request id by a single reader task. Each request
    has a deadline (`keyd.request_timeout_ms`). The connection is made on first use, in
    the running event loop, and remade when needed: when the socket file is replaced (keyd
    restarted), and after a request timed out with nothing heard from keyd since it was
    sent (the Lazy Pirate reset: close with LINGER 0, reconnect on the next request).
    Requests are never resent behind the caller's back; every op is idempotent, so the
    caller may simply try again.

    `close()` is a coroutine: it fails pending requests, stops the reader and closes the
    socket and its ZeroMQ context. Use the client from one event loop at a time.
    """

    def __init__(self, settings: KeydSettings, *, expected_uid: int | None = None) -> None:
        self.path = control_socket_path(settings.socket_dir)
        self._timeout_s = settings.request_timeout_ms / 1000
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

    async def ping(self) -> PingReply:
        return await self._call(PingRequest(v=PROTOCOL_VERSION, id=self._next_id()), PingReply)

    async def encrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """Ciphertexts of (plaintext, context) pairs, in order."""
        request = EncryptRequest(
            v=PROTOCOL_VERSION,
            id=self._next_id(),
            items=[
                EncryptItem(plaintext=plaintext, context=context) for plaintext, context in items
            ],
        )
        return self._same_length(len(items), (await self._call(request, ItemsReply)).items)

    async def decrypt(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """Plaintexts of (ciphertext, context) pairs, in order; `KeydRejected` with reason
        `decrypt_failed` if any of them does not open."""
        request = DecryptRequest(
            v=PROTOCOL_VERSION,
            id=self._next_id(),
            items=[
                DecryptItem(ciphertext=ciphertext, context=context) for ciphertext, context in items
            ],
        )
        return self._same_length(len(items), (await self._call(request, ItemsReply)).items)

    async def job_load(
        self,
        job_id: str,
        token_sha256: bytes,
        ttl_s: int,
        secrets: Sequence[tuple[str, bytes, str]],
    ) -> int:
        """Cache a job's secrets, given as (name, ciphertext, context); returns how many."""
        request = JobLoadRequest(
            v=PROTOCOL_VERSION,
            id=self._next_id(),
            job_id=job_id,
            token_sha256=token_sha256,
            ttl_s=ttl_s,
            secrets=[
                JobSecret(name=name, ciphertext=ciphertext, context=context)
                for name, ciphertext, context in secrets
            ],
        )
        return (await self._call(request, JobLoadReply)).loaded

    async def job_drop(self, job_id: str) -> bool:
        """Forget a job's secrets; False if keyd did not hold them."""
        request = JobDropRequest(v=PROTOCOL_VERSION, id=self._next_id(), job_id=job_id)
        return (await self._call(request, JobDropReply)).dropped

    async def stats(self) -> dict[str, Any]:
        """keyd's counters, as `StatsReply` lists them."""
        reply = await self._call(StatsRequest(v=PROTOCOL_VERSION, id=self._next_id()), StatsReply)
        fields = msgspec.structs.asdict(reply)
        for envelope in ("v", "id", "ok"):
            del fields[envelope]
        return fields

    async def close(self) -> None:
        reader = self._reader
        self._reset("the keyd client was closed")
        if reader is not None and reader.get_loop() is asyncio.get_running_loop():
            await asyncio.gather(reader, return_exceptions=True)
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    # Plumbing.

    def _next_id(self) -> int:
        return next(self._ids)

    def _same_length(self, expected: int, items: list[bytes]) -> list[bytes]:
        if len(items) != expected:
            raise KeydUnavailable(
                f"keyd at {self.path} answered {len(items)} items for {expected}; "
                "client and keyd disagree on the protocol"
            )
        return items

    async def _call(self, request: Request, reply_type: type[_ReplyT]) -> _ReplyT:
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
        return _reply_or_raise(frame, decoder, self.path)

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


def _target(
    target: Settings | KeydSettings | str | os.PathLike[str], timeout_ms: int | None
) -> tuple[Path, int]:
    if isinstance(target, str | os.PathLike):
        return Path(target), _DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
    keyd = cast("KeydSettings", getattr(target, "keyd", target))  # Settings holds it as .keyd
    return keyd.socket_dir, keyd.request_timeout_ms if timeout_ms is None else timeout_ms


def _job_secrets_request(job_id: str, token: str) -> tuple[int, bytes]:
    request_id = int.from_bytes(os.urandom(4), "big")
    request = JobSecretsRequest(v=PROTOCOL_VERSION, id=request_id, job_id=job_id, token=token)
    return request_id, _ENCODER.encode(request)


_JOB_SECRETS_DECODER = msgspec.msgpack.Decoder(JobSecretsReply)


def _job_secrets_reply(frame: bytes, request_id: int, path: Path) -> dict[str, bytes]:
    reply = _reply_or_raise(frame, _JOB_SECRETS_DECODER, path)
    if reply.id != request_id:
        raise KeydUnavailable(f"keyd at {path} answered another request")
    return reply.secrets


def fetch_job_secrets(
    target: Settings | KeydSettings | str | os.PathLike[str],
    job_id: str,
    token: str,
    timeout_ms: int | None = None,
    *,
    expected_uid: int | None = None,
) -> dict[str, bytes]:
    """A job's secrets (name to value) from keyd's worker socket, for the job's token.

    `target` is Danube's settings or simply keyd's socket directory. Blocking; uses a
    plain REQ socket and its own ZeroMQ context, both closed before returning."""
    socket_dir, timeout = _target(target, timeout_ms)
    path = worker_socket_path(socket_dir)
    check_socket_file(path, expected_uid)
    request_id, payload = _job_secrets_request(job_id, token)
    context = zmq.Context()
    try:
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, timeout)
        sock.connect(endpoint(path))
        try:
            sock.send(payload)
            if not sock.poll(timeout, zmq.POLLIN):
                raise KeydUnavailable(
                    f"keyd is not answering on {path} (no reply within {timeout} ms)"
                )
            frame = sock.recv()
        except zmq.Again:
            raise KeydUnavailable(f"keyd is not answering on {path}") from None
        finally:
            sock.close(linger=0)
    finally:
        context.term()
    return _job_secrets_reply(frame, request_id, path)


async def fetch_job_secrets_async(
    target: Settings | KeydSettings | str | os.PathLike[str],
    job_id: str,
    token: str,
    timeout_ms: int | None = None,
    *,
    expected_uid: int | None = None,
) -> dict[str, bytes]:
    """`fetch_job_secrets` for asyncio code: the same checks, errors and deadline."""
    socket_dir, timeout = _target(target, timeout_ms)
    path = worker_socket_path(socket_dir)
    check_socket_file(path, expected_uid)
    request_id, payload = _job_secrets_request(job_id, token)
    context = zmq.asyncio.Context()
    try:
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint(path))
        try:
            async with asyncio.timeout(timeout / 1000):
                await sock.send(payload)
                frame = await sock.recv()
        except TimeoutError:
            raise KeydUnavailable(
                f"keyd is not answering on {path} (no reply within {timeout} ms)"
            ) from None
        finally:
            sock.close(linger=0)
    finally:
        context.term()
    return _job_secrets_reply(frame, request_id, path)
