"""A worker's client of keyd's worker socket: `KeydWorkerClient`, the connection a
worker keeps for all its jobs, and the one-shot `fetch_job_secrets` and its asyncio twin.

Every fetch checks that the socket file is keyd's (`check_socket_file`). The one-shot
functions open their own REQ socket and ZeroMQ context for one request and close both
before returning: a new context, connection and peer check by keyd cost about 1.2 ms
more than the request itself, which is why a worker keeps `KeydWorkerClient`'s one
connection (remade when keyd restarts or stops answering, as the API's control client
does). All raise `KeydUnavailable` when keyd is absent or silent past the deadline, and
`KeydRejected(reason, message)` when keyd answers with an error reply.

Nothing here connects or builds a context at import time; this module does not import
pydantic, so a worker can use it without Danube's configuration.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import msgspec
import zmq
import zmq.asyncio

from danube_shared.errors import KeydUnavailable
from danube_shared.keyd_protocol import (
    PROTOCOL_VERSION,
    JobSecretsReply,
    JobSecretsRequest,
    endpoint,
    worker_socket_path,
)
from danube_shared.keyd_transport import KeydConnection, check_socket_file, decode_reply

if TYPE_CHECKING:
    from danube_shared.config import KeydSettings, Settings

__all__ = ["KeydWorkerClient", "fetch_job_secrets", "fetch_job_secrets_async"]

_ENCODER = msgspec.msgpack.Encoder()
_JOB_SECRETS_DECODER = msgspec.msgpack.Decoder(JobSecretsReply)
_DEFAULT_TIMEOUT_MS = 2000


class KeydWorkerClient:
    """One worker's connection to keyd's worker socket, kept from job to job.

    Requests go over one DEALER socket (`KeydConnection`, REQ-style framing), made on
    first use and remade when the socket file is replaced (keyd restarted) or after a
    request got no answer in time. Each request has the deadline `timeout_ms` (default
    `keyd.request_timeout_ms`); it is never resent behind the caller's back. Use it from
    one event loop; `close()` when the worker stops."""

    def __init__(
        self,
        target: Settings | KeydSettings | str | os.PathLike[str],
        timeout_ms: int | None = None,
        *,
        expected_uid: int | None = None,
    ) -> None:
        socket_dir, timeout = _target(target, timeout_ms)
        self.path = worker_socket_path(socket_dir)
        self._connection = KeydConnection(self.path, timeout / 1000, expected_uid=expected_uid)

    async def job_secrets(self, job_id: str, token: str) -> dict[str, bytes]:
        """The job's secrets (name to value), for the job's token."""
        request = JobSecretsRequest(
            v=PROTOCOL_VERSION, id=self._connection.next_id(), job_id=job_id, token=token
        )
        reply = await self._connection.call(request, JobSecretsReply)
        return reply.secrets

    async def close(self) -> None:
        await self._connection.close()


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


def _job_secrets_reply(frame: bytes, request_id: int, path: Path) -> dict[str, bytes]:
    reply = decode_reply(frame, _JOB_SECRETS_DECODER, path)
    if reply.id != request_id:
        raise KeydUnavailable(f"keyd at {path} answered another request")
    return reply.secrets
