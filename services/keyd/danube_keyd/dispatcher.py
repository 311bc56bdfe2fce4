"""keyd's request handling: one request frame in, one reply frame out.

`Dispatcher` decodes a request for the socket it came in on (control or worker), checks
it against the protocol's caps, runs the op against the cipher and the job cache, counts
it, and encodes the reply. It never raises: whatever arrives, the worst outcome is an
error reply, and no exception text crosses the wire. It knows nothing of sockets;
`danube_keyd.socket_server` feeds it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from danube_keyd.aead import Aead, DecryptFailed, plaintext_size
from danube_keyd.secret_cache import CacheFull, JobNotCached, SecretCache, TokenMismatch
from danube_keyd.wiping import zero
from danube_shared.keyd_protocol import (
    ALL_OPS,
    BAD_REQUEST,
    CONTROL_OPS,
    DECRYPT_FAILED,
    FORBIDDEN,
    INTERNAL,
    MAX_CIPHERTEXT_BYTES,
    MAX_CONTEXT_BYTES,
    MAX_ITEMS,
    MAX_JOB_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_PLAINTEXT_BYTES,
    MAX_TOKEN_CHARS,
    NOT_FOUND,
    PROTOCOL_VERSION,
    TOO_LARGE,
    UNAUTHORIZED,
    WORKER_OPS,
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
)
from danube_shared.logs import get_logger

log = get_logger(__name__)


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
