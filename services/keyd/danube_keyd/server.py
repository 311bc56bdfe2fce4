"""keyd's request handling (`Dispatcher`) and its socket loop (`KeydServer`).

The dispatcher turns one request frame into one reply frame and never raises: whatever
arrives, the worst outcome is an error reply. The loop is single-threaded: one
`zmq.Poller` over the two ROUTER sockets, the ZAP socket and a signal wakeup fd, draining
each socket in bounded batches so that no peer can starve the others, and sleeping no
longer than the next cache deadline so that expired jobs are reaped on time.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zmq

from danube_keyd.aead import Aead, DecryptFailed, plaintext_size
from danube_keyd.peer_auth import ZAP_ENDPOINT, PeerAuthorizer
from danube_keyd.secret_cache import CacheFull, JobNotCached, SecretCache, TokenMismatch, zero
from danube_shared.config import KeydSettings
from danube_shared.keyd_protocol import (
    ALL_OPS,
    BAD_REQUEST,
    CONTROL_OPS,
    CONTROL_ZAP_DOMAIN,
    DECRYPT_FAILED,
    FORBIDDEN,
    INTERNAL,
    MAX_CIPHERTEXT_BYTES,
    MAX_CONTEXT_BYTES,
    MAX_ITEMS,
    MAX_JOB_ID_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_CHARS,
    MAX_PLAINTEXT_BYTES,
    MAX_TOKEN_CHARS,
    NOT_FOUND,
    PROTOCOL_VERSION,
    TOO_LARGE,
    UNAUTHORIZED,
    WORKER_OPS,
    WORKER_ZAP_DOMAIN,
    ControlRequest,
    DecryptRequest,
    EncryptRequest,
    ErrorCode,
    ErrorReply,
    ItemsReply,
    JobDropReply,
    JobDropRequest,
    JobLoadReply,
    JobLoadRequest,
    JobSecret,
    JobSecretsRequest,
    PingReply,
    PingRequest,
    Reply,
    RequestHead,
    Role,
    StatsReply,
    StatsRequest,
    WorkerRequest,
    control_socket_path,
    endpoint,
    worker_socket_path,
)
from danube_shared.logs import get_logger

log = get_logger(__name__)

# How many messages one socket may hand the loop before the others get a turn.
BATCH = 256
# Bounded queues: past this many messages per peer, ROUTER drops rather than blocks.
HIGH_WATER_MARK = 1000
# A peer that connects and never completes the ZMTP handshake is dropped after this.
HANDSHAKE_MS = 5000
# The loop wakes at least this often even with nothing to do.
IDLE_POLL_MS = 1000


class _Refused(Exception):
    """A request is answered with an error reply. `request_id` is set when the refusal
    comes before the dispatcher could decode the request as a whole."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: int | None = None,
        op: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.request_id = request_id
        self.op = op


class _PlaintextItemsReply(Reply, kw_only=True):
    """`ItemsReply` as keyd writes it for `decrypt`: plaintexts in overwritable buffers."""

    items: list[bytearray]


class _JobSecretsOut(Reply, kw_only=True):
    """`JobSecretsReply` as keyd writes it, straight from the cache's buffers."""

    secrets: dict[str, bytearray]


@dataclass(slots=True)
class Counters:
    """What `stats` reports besides the cache and the cipher."""

    requests: dict[str, int] = field(default_factory=dict[str, int])
    errors: dict[str, int] = field(default_factory=dict[str, int])
    dropped_messages: int = 0
    denied_connections: int = 0


# msgspec's validation messages name types and a path into our own schema, never a value;
# only messages of exactly these shapes are passed on to the client.
_SAFE_SCHEMA_MESSAGE = re.compile(
    r"(Expected `[\w ,|\[\]]+`, got `\w+`|Object missing required field `\w+`)"
    r"( - at `\$[\w.\[\]]*`)?"
)
_OP_NAME = re.compile(r"[a-z_]{1,32}")


class Dispatcher:
    """Decodes a request frame, runs the op and encodes the reply."""

    def __init__(
        self,
        aead: Aead,
        cache: SecretCache,
        *,
        boot_id: str,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._aead = aead
        self._cache = cache
        self.boot_id = boot_id
        self.counters = counters if counters is not None else Counters()
        self._clock = clock
        self._started = clock()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[Role, msgspec.msgpack.Decoder[Any]] = {
            "control": msgspec.msgpack.Decoder(ControlRequest),
            "worker": msgspec.msgpack.Decoder(WorkerRequest),
        }
        self._head_decoder = msgspec.msgpack.Decoder(RequestHead)
        self._handlers: dict[type[Any], tuple[str, Callable[[Any], bytes | bytearray]]] = {
            PingRequest: ("ping", self._ping),
            EncryptRequest: ("encrypt", self._encrypt),
            DecryptRequest: ("decrypt", self._decrypt),
            JobLoadRequest: ("job_load", self._job_load),
            JobDropRequest: ("job_drop", self._job_drop),
            StatsRequest: ("stats", self._stats),
            JobSecretsRequest: ("job_secrets", self._job_secrets),
        }
        self._debug = logging.getLogger(__name__).isEnabledFor(logging.DEBUG)

    def handle(self, role: Role, payload: bytes) -> bytes | bytearray:
        """The reply frame to `payload`, received on the `role` socket. Never raises.

        A `bytearray` reply carries plaintext: overwrite it (`zero`) once it is sent."""
        request_id = 0
        op = "invalid"
        try:
            request = self._decode(role, payload)
            request_id = request.id
            op, handler = self._handlers[type(request)]
            self._count(self.counters.requests, op)
            reply = handler(request)
            if self._debug:
                log.debug("request served", role=role, op=op, id=request_id)
            return reply  # noqa: TRY300 -- the except clauses below map to error replies
        except _Refused as refusal:
            if refusal.request_id is not None:
                request_id = refusal.request_id
            if refusal.op is not None:
                op = refusal.op
            return self._refuse(role, op, request_id, refusal.code, refusal.message)
        except Exception:  # the last line of defence: keyd keeps serving
            # The traceback is rendered without frame locals, which may hold plaintexts.
            log.exception("request failed inside keyd", role=role, op=op)
            return self._refuse(
                role, op, request_id, INTERNAL, "keyd failed on this request; see its log"
            )

    def answer(self, role: Role, frames: list[bytes]) -> list[bytes | bytearray] | None:
        """The reply frames to one message as a ROUTER receives it ([routing id,
        delimiter, request]), or None to drop a message of any other shape. Never raises.

        A `bytearray` last frame carries plaintext: overwrite it once it is sent."""
        if len(frames) != 3 or frames[1]:
            self.counters.dropped_messages += 1
            return None
        return [frames[0], b"", self.handle(role, frames[2])]

    def _decode(self, role: Role, payload: bytes) -> Any:
        try:
            request = self._decoders[role].decode(payload)
        except msgspec.ValidationError as exc:
            raise self._explain_invalid(role, payload, str(exc)) from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            self._count(self.counters.requests, "invalid")
            raise _Refused(BAD_REQUEST, "request is not a valid msgpack frame") from None
        except RecursionError:
            self._count(self.counters.requests, "invalid")
            raise _Refused(BAD_REQUEST, "request is nested too deeply") from None
        if request.v != PROTOCOL_VERSION:
            self._count(self.counters.requests, "invalid")
            raise _Refused(
                BAD_REQUEST,
                f"protocol version {request.v} is not served; this keyd speaks v{PROTOCOL_VERSION}",
                request_id=request.id,
            )
        return request

    def _explain_invalid(self, role: Role, payload: bytes, detail: str) -> _Refused:
        """The refusal that best says why `payload` did not match the role's schema."""
        self._count(self.counters.requests, "invalid")
        try:
            head = self._head_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return _Refused(BAD_REQUEST, "request must be a msgpack map")
        if type(head.id) is not int:
            return _Refused(BAD_REQUEST, 'request must carry an integer "id"')
        request_id = head.id
        if head.v != PROTOCOL_VERSION:
            return _Refused(
                BAD_REQUEST,
                f'request must carry "v": {PROTOCOL_VERSION}, the protocol version',
                request_id=request_id,
            )
        op = head.op
        if not isinstance(op, str) or op not in ALL_OPS:
            shown = f" {op!r}" if isinstance(op, str) and _OP_NAME.fullmatch(op) else ""
            return _Refused(BAD_REQUEST, f"unknown op{shown}", request_id=request_id)
        if op not in _ALLOWED[role]:
            return _Refused(
                FORBIDDEN,
                f"op {op!r} is not allowed on the {role} socket",
                request_id=request_id,
                op=op,
            )
        shape = detail if _SAFE_SCHEMA_MESSAGE.fullmatch(detail) else "wrong field types"
        return _Refused(
            BAD_REQUEST, f"malformed {op!r} request: {shape}", request_id=request_id, op=op
        )

    def _refuse(self, role: Role, op: str, request_id: int, code: ErrorCode, message: str) -> bytes:
        self._count(self.counters.errors, code)
        if code in (FORBIDDEN, UNAUTHORIZED, INTERNAL):
            log.warning("request refused", role=role, op=op, error=code)
        elif self._debug:
            log.debug("request refused", role=role, op=op, error=code)
        return self._encoder.encode(ErrorReply(id=request_id, error=code, message=message))

    @staticmethod
    def _count(counter: dict[str, int], name: str) -> None:
        counter[name] = counter.get(name, 0) + 1

    # The ops.

    def _ping(self, request: PingRequest) -> bytes:
        return self._encoder.encode(
            PingReply(id=request.id, key_id=self._aead.key_id, boot_id=self.boot_id)
        )

    def _encrypt(self, request: EncryptRequest) -> bytes:
        items = request.items
        _check_count(len(items), "items")
        for index, item in enumerate(items):
            if len(item.plaintext) > MAX_PLAINTEXT_BYTES:
                raise _Refused(
                    TOO_LARGE, f"item {index}: plaintext over {MAX_PLAINTEXT_BYTES} bytes"
                )
            _check_context(item.context, f"item {index}")
        encrypt = self._aead.encrypt
        ciphertexts = [encrypt(item.plaintext, item.context) for item in items]
        return self._encoder.encode(ItemsReply(id=request.id, items=ciphertexts))

    def _decrypt(self, request: DecryptRequest) -> bytearray:
        items = request.items
        _check_count(len(items), "items")
        for index, item in enumerate(items):
            if len(item.ciphertext) > MAX_CIPHERTEXT_BYTES:
                raise _Refused(
                    TOO_LARGE, f"item {index}: ciphertext over {MAX_CIPHERTEXT_BYTES} bytes"
                )
            _check_context(item.context, f"item {index}")
        plaintexts: list[bytearray] = []
        try:
            for index, item in enumerate(items):
                out = bytearray(plaintext_size(item.ciphertext))
                plaintexts.append(out)
                try:
                    self._aead.decrypt_into(item.ciphertext, item.context, out)
                except DecryptFailed:
                    raise _Refused(
                        DECRYPT_FAILED,
                        f"item {index} does not open under this key and context "
                        "(wrong key or context, corrupted, or unknown format)",
                    ) from None
            buffer = bytearray()
            self._encoder.encode_into(_PlaintextItemsReply(id=request.id, items=plaintexts), buffer)
            return buffer
        finally:
            for plaintext in plaintexts:
                zero(plaintext)

    def _job_load(self, request: JobLoadRequest) -> bytes:
        _check_job_id(request.job_id)
        if len(request.token_sha256) != 32:
            raise _Refused(BAD_REQUEST, "token_sha256 must be the 32-byte SHA-256 of the token")
        if request.ttl_s < 1:
            raise _Refused(BAD_REQUEST, "ttl_s must be at least 1")
        secrets = request.secrets
        _check_secrets(secrets)
        plaintexts: dict[str, bytearray] = {}
        try:
            for secret in secrets:
                out = bytearray(plaintext_size(secret.ciphertext))
                plaintexts[secret.name] = out
                try:
                    self._aead.decrypt_into(secret.ciphertext, secret.context, out)
                except DecryptFailed:
                    raise _Refused(
                        DECRYPT_FAILED,
                        f"secret {secret.name!r} does not open under this key and context "
                        "(wrong key or context, corrupted, or unknown format)",
                    ) from None
            loaded = self._cache.load(
                request.job_id, request.token_sha256, request.ttl_s, plaintexts
            )
        except CacheFull:
            for plaintext in plaintexts.values():
                zero(plaintext)
            raise _Refused(TOO_LARGE, "keyd's job cache is full; drop finished jobs") from None
        except BaseException:
            for plaintext in plaintexts.values():
                zero(plaintext)
            raise
        log.info(
            "job loaded",
            job_id=request.job_id,
            secret_count=loaded,
            ttl_s=min(request.ttl_s, self._cache.max_ttl_s),
        )
        return self._encoder.encode(JobLoadReply(id=request.id, loaded=loaded))

    def _job_drop(self, request: JobDropRequest) -> bytes:
        _check_job_id(request.job_id)
        dropped = self._cache.drop(request.job_id)
        log.info("job dropped", job_id=request.job_id, was_cached=dropped)
        return self._encoder.encode(JobDropReply(id=request.id, dropped=dropped))

    def _stats(self, request: StatsRequest) -> bytes:
        counters = self.counters
        return self._encoder.encode(
            StatsReply(
                id=request.id,
                boot_id=self.boot_id,
                key_id=self._aead.key_id.hex(),
                uptime_s=round(self._clock() - self._started, 3),
                jobs_cached=len(self._cache),
                secrets_cached=self._cache.secret_count(),
                requests=dict(counters.requests),
                errors=dict(counters.errors),
                encryptions={self._aead.key_id.hex(): self._aead.encryptions},
                decryptions=self._aead.decryptions,
                dropped_messages=counters.dropped_messages,
                denied_connections=counters.denied_connections,
            )
        )

    def _job_secrets(self, request: JobSecretsRequest) -> bytearray:
        _check_job_id(request.job_id)
        if len(request.token) > MAX_TOKEN_CHARS:
            raise _Refused(TOO_LARGE, f"token over {MAX_TOKEN_CHARS} characters")
        try:
            secrets = self._cache.secrets_for(request.job_id, request.token)
        except JobNotCached:
            raise _Refused(
                NOT_FOUND, "no secrets cached for this job (not started, finished or expired)"
            ) from None
        except TokenMismatch:
            log.warning("job token mismatch", job_id=request.job_id)
            raise _Refused(UNAUTHORIZED, "wrong token for this job") from None
        buffer = bytearray()
        self._encoder.encode_into(_JobSecretsOut(id=request.id, secrets=dict(secrets)), buffer)
        log.info("job secrets fetched", job_id=request.job_id, secret_count=len(secrets))
        return buffer


_ALLOWED: dict[Role, frozenset[str]] = {"control": CONTROL_OPS, "worker": WORKER_OPS}


def _check_count(count: int, what: str) -> None:
    if count > MAX_ITEMS:
        raise _Refused(TOO_LARGE, f"{count} {what}; at most {MAX_ITEMS} per request")


def _check_secrets(secrets: list[JobSecret]) -> None:
    _check_count(len(secrets), "secrets")
    names: set[str] = set()
    for secret in secrets:
        if not secret.name:
            raise _Refused(BAD_REQUEST, "a secret name is empty")
        if len(secret.name) > MAX_NAME_CHARS:
            raise _Refused(TOO_LARGE, f"a secret name is over {MAX_NAME_CHARS} characters")
        if secret.name in names:
            raise _Refused(BAD_REQUEST, f"secret name {secret.name!r} appears twice")
        names.add(secret.name)
        if len(secret.ciphertext) > MAX_CIPHERTEXT_BYTES:
            raise _Refused(
                TOO_LARGE, f"secret {secret.name!r}: ciphertext over {MAX_CIPHERTEXT_BYTES} bytes"
            )
        _check_context(secret.context, f"secret {secret.name!r}")


def _check_context(context: str, where: str) -> None:
    if not context:
        raise _Refused(BAD_REQUEST, f"{where}: context is empty; it names the row")
    if len(context) > MAX_CONTEXT_BYTES or len(context.encode()) > MAX_CONTEXT_BYTES:
        raise _Refused(TOO_LARGE, f"{where}: context over {MAX_CONTEXT_BYTES} bytes")


def _check_job_id(job_id: str) -> None:
    if not job_id:
        raise _Refused(BAD_REQUEST, "job_id is empty")
    if len(job_id) > MAX_JOB_ID_CHARS:
        raise _Refused(TOO_LARGE, f"job_id over {MAX_JOB_ID_CHARS} characters")


class KeydServer:
    """The two ROUTER sockets, the ZAP handler and the loop that serves them."""

    def __init__(
        self,
        settings: KeydSettings,
        dispatcher: Dispatcher,
        cache: SecretCache,
        *,
        keyd_uid: int,
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._cache = cache
        self._counters = dispatcher.counters
        self._authorizer = PeerAuthorizer(
            {
                CONTROL_ZAP_DOMAIN: frozenset({keyd_uid, *settings.control_uids}),
                WORKER_ZAP_DOMAIN: frozenset({keyd_uid, *settings.worker_uids}),
            }
        )
        self.control_path = control_socket_path(settings.socket_dir)
        self.worker_path = worker_socket_path(settings.socket_dir)
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._zap: zmq.Socket[bytes] | None = None
        self._sockets: dict[Role, zmq.Socket[bytes]] = {}
        self._debug = logging.getLogger(__name__).isEnabledFor(logging.DEBUG)

    def bind(self) -> None:
        """Bind the ZAP handler, then both sockets (0660). Raises `zmq.ZMQError`."""
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._context = context
        # The ZAP handler is bound before any socket that needs it; with
        # ZAP_ENFORCE_DOMAIN a connection is refused, not waved through, if it is gone.
        zap = context.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
        self._zap = zap
        previous_umask = os.umask(0o117)  # socket files are created 0660
        endpoints: tuple[tuple[Role, str, Path], ...] = (
            ("control", CONTROL_ZAP_DOMAIN, self.control_path),
            ("worker", WORKER_ZAP_DOMAIN, self.worker_path),
        )
        try:
            for role, domain, path in endpoints:
                sock = context.socket(zmq.ROUTER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
                sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
                sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
                sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
                sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
                self._sockets[role] = sock
                sock.bind(endpoint(path))
                path.chmod(0o660)
        finally:
            os.umask(previous_umask)

    def serve(self, wakeup_fd: int) -> None:
        """Serve until `wakeup_fd` becomes readable (a signal arrived)."""
        if self._zap is None:
            raise RuntimeError("KeydServer.serve() before bind()")
        poller = zmq.Poller()
        poller.register(self._zap, zmq.POLLIN)
        for sock in self._sockets.values():
            poller.register(sock, zmq.POLLIN)
        poller.register(wakeup_fd, zmq.POLLIN)
        roles = list(self._sockets.items())
        while True:
            ready = dict(poller.poll(self._poll_timeout_ms()))
            if wakeup_fd in ready:
                return
            if self._zap in ready:
                self._answer_zap(self._zap)
            for role, sock in roles:
                if sock in ready:
                    self._drain(role, sock)
            reaped = self._cache.reap()
            if reaped:
                log.info("jobs expired", count=reaped)

    def _poll_timeout_ms(self) -> int:
        wait = self._cache.seconds_until_next_deadline()
        if wait is None:
            return IDLE_POLL_MS
        return min(IDLE_POLL_MS, int(wait * 1000) + 1)

    def _answer_zap(self, zap: zmq.Socket[bytes]) -> None:
        while True:
            try:
                request = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            decision = self._authorizer.decide(request)
            if not decision.allowed:
                self._counters.denied_connections += 1
                log.warning(
                    "connection refused",
                    domain=decision.domain,
                    peer_uid=decision.uid,
                    peer_pid=decision.pid,
                    reason=decision.reason,
                )
            elif self._debug:
                log.debug("connection accepted", domain=decision.domain, peer_uid=decision.uid)
            zap.send_multipart(self._authorizer.reply(request, decision))

    def _drain(self, role: Role, sock: zmq.Socket[bytes]) -> None:
        answer = self._dispatcher.answer
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = answer(role, frames)
            if reply is None:
                continue
            try:
                # copy=True: libzmq gets its own copy, so the buffer can be zeroed below.
                sock.send_multipart(reply, zmq.NOBLOCK, copy=True)
            except zmq.ZMQError:
                # The peer is gone or over its high-water mark: its loss, not others'.
                self._counters.dropped_messages += 1
            last = reply[-1]
            if isinstance(last, bytearray):
                zero(last)

    def close(self) -> None:
        """Close the sockets (libzmq unlinks their files) and the context."""
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if self._zap is not None:
            self._zap.close(linger=0)
            self._zap = None
        for path in (self.control_path, self.worker_path):
            _unlink_socket(path)
        if self._context is not None:
            self._context.term()
            self._context = None


def _unlink_socket(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("socket file not removed", path=str(path), error=exc.strerror)
