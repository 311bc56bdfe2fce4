"""A worker's client of keyd's worker socket: `fetch_job_secrets` and its asyncio twin.

Each call checks that the socket file is keyd's (`check_socket_file`), opens its own REQ
socket and ZeroMQ context for one request, and closes both before returning. They raise
`KeydUnavailable` when keyd is absent or silent past the deadline, and
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
from danube_shared.keyd_transport import check_socket_file, decode_reply

if TYPE_CHECKING:
    from danube_shared.config import KeydSettings, Settings

__all__ = ["fetch_job_secrets", "fetch_job_secrets_async"]

_ENCODER = msgspec.msgpack.Encoder()
_JOB_SECRETS_DECODER = msgspec.msgpack.Decoder(JobSecretsReply)
_DEFAULT_TIMEOUT_MS = 2000


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
