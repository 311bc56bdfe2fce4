"""keyd's request handling: one request frame in, one reply frame out.

`Dispatcher` decodes a request for the socket it came in on (control or worker), checks
it against the protocol's caps, runs the op against the keyring, the encryption counter
and the job cache, writes the audit line of an audited op (before the reply exists: no
line, no reply), counts it, and encodes the reply. It never raises: whatever arrives,
the worst outcome is an error reply, and no exception text crosses the wire. It knows
nothing of sockets; `danube_keyd.socket_server` feeds it, with the peer's uid and pid.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from danube_keyd.aead import Aead, DecryptFailed, plaintext_size
from danube_keyd.audit import AuditUnavailable, AuditVerdict
from danube_keyd.encryption_counter import CounterUnavailable, EncryptionCounter, KeyExhausted
from danube_keyd.keyring import Keyring
from danube_keyd.secret_cache import CacheFull, JobNotCached, SecretCache, TokenMismatch
from danube_keyd.wiping import zero
from danube_shared.errors import DanubeError
from danube_shared.keyd_protocol import (
    ALL_OPS,
    BAD_REQUEST,
    CONTROL_OPS,
    DECRYPT_FAILED,
    FORBIDDEN,
    FORMAT_VERSION,
    HEADER_BYTES,
    INTERNAL,
    KEY_EXHAUSTED,
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
    AuditVerifyReply,
    AuditVerifyRequest,
    CiphertextItem,
    ControlRequest,
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
    KeysReloadReply,
    KeysReloadRequest,
    PingReply,
    PingRequest,
    Reply,
    RequestHead,
    RewrapRequest,
    Role,
    StatsReply,
    StatsRequest,
    WorkerRequest,
)
from danube_shared.logs import get_logger

log = get_logger(__name__)

AUDIT_UNAVAILABLE = "audit log unavailable"


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request: the kernel's credentials of the connection (through ZAP);
    None where they are not known (an in-process caller, a signal)."""

    uid: int | None = None
    pid: int | None = None


UNKNOWN_PEER = Peer()


class AuditTrail(Protocol):
    """Where audited requests are recorded (`danube_keyd.audit.AuditLog`)."""

    def append(
        self,
        op: str,
        *,
        uid: int | None,
        pid: int | None,
        job_id: str | None,
        names: Sequence[str],
        key_ids: Sequence[bytes],
        result: str,
    ) -> None: ...

    def write_head(self) -> None:
        """Write what `append` left for after the reply (the chain's head); raises
        `AuditUnavailable`."""
        ...

    def verify(self) -> AuditVerdict: ...


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
        audited: bool = False,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.request_id = request_id
        self.op = op
        # True when the refusal's audit line is written already (or cannot be).
        self.audited = audited


class _JobSecretsOut(Reply, kw_only=True):
    """`JobSecretsReply` as keyd writes it, straight from the cache's buffers."""

    secrets: Mapping[str, bytearray]


@dataclass(slots=True)
class Counters:
    """What `stats` reports besides the cache and the cipher."""

    requests: dict[str, int] = field(default_factory=dict[str, int])
    errors: dict[str, int] = field(default_factory=dict[str, int])
    dropped_messages: int = 0
    dropped_replies: int = 0
    denied_connections: int = 0
    decryptions: int = 0


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
        keyring: Keyring,
        cache: SecretCache,
        *,
        boot_id: str,
        counter: EncryptionCounter,
        audit: AuditTrail,
        load_keyring: Callable[[], Keyring] | None = None,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`load_keyring` reads the key directory again (for `keys_reload` and SIGHUP)
        and raises `DanubeError` if it refuses a file; without it, reloads are refused."""
        self.keyring = keyring
        self._cache = cache
        self._counter = counter
        self._audit = audit
        self._load_keyring = load_keyring
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
        self._handlers: dict[type[Any], tuple[str, Callable[[Any, Peer], bytes | bytearray]]] = {
            PingRequest: ("ping", self._ping),
            EncryptRequest: ("encrypt", self._encrypt),
            RewrapRequest: ("rewrap", self._rewrap),
            JobLoadRequest: ("job_load", self._job_load),
            JobDropRequest: ("job_drop", self._job_drop),
            StatsRequest: ("stats", self._stats),
            KeysReloadRequest: ("keys_reload", self._keys_reload),
            AuditVerifyRequest: ("audit_verify", self._audit_verify),
            JobSecretsRequest: ("job_secrets", self._job_secrets),
        }
        # The level is set once, in main(), before this is built; asked here so that a
        # per-request line below it costs one attribute test.
        self._debug = logging.getLogger(__name__).isEnabledFor(logging.DEBUG)
        self._info = logging.getLogger(__name__).isEnabledFor(logging.INFO)

    def handle(self, role: Role, payload: bytes, peer: Peer = UNKNOWN_PEER) -> bytes | bytearray:
        """The reply frame to `payload`, received on the `role` socket from `peer`.
        Never raises.

        A `bytearray` reply carries plaintext: overwrite it (`zero`) once it is sent."""
        request_id = 0
        op = "invalid"
        request: Any = None
        try:
            request = self._decode(role, payload)
            request_id = request.id
            op, handler = self._handlers[type(request)]
            self._count(self.counters.requests, op)
            reply = handler(request, peer)
            if self._debug:
                log.debug("request served", role=role, op=op, id=request_id)
            return reply  # noqa: TRY300 -- the except clauses below map to error replies
        except _Refused as refusal:
            if refusal.request_id is not None:
                request_id = refusal.request_id
            if refusal.op is not None:
                op = refusal.op
            code, message = refusal.code, refusal.message
            # A refused audited op is recorded too, even one too malformed to decode
            # (then with what could be read of it: the op).
            if op in _AUDITED and not refusal.audited:
                try:
                    self._record(op, peer, request, result=code)
                except _Refused as unrecorded:
                    code, message = unrecorded.code, unrecorded.message
            return self._refuse(role, op, request_id, code, message)
        except Exception:  # the last line of defence: keyd keeps serving
            # The traceback is rendered without frame locals, which may hold plaintexts.
            log.exception("request failed inside keyd", role=role, op=op)
            return self._refuse(
                role, op, request_id, INTERNAL, "keyd failed on this request; see its log"
            )

    def answer(
        self, role: Role, frames: list[bytes], peer: Peer = UNKNOWN_PEER
    ) -> list[bytes | bytearray] | None:
        """The reply frames to one message as a ROUTER receives it ([routing id,
        delimiter, request]), or None to drop a message of any other shape. Never raises.

        A `bytearray` last frame carries plaintext: overwrite it once it is sent."""
        if len(frames) != 3 or frames[1]:
            self.counters.dropped_messages += 1
            # The first, then every 1000th: a peer sending junk cannot flood the log.
            if self.counters.dropped_messages % 1000 == 1:
                log.warning(
                    "message dropped: not [delimiter, request]",
                    role=role,
                    frames=len(frames),
                    peer_uid=peer.uid,
                    peer_pid=peer.pid,
                    dropped_messages=self.counters.dropped_messages,
                )
            return None
        return [frames[0], b"", self.handle(role, frames[2], peer)]

    def finish_audit(self) -> None:
        """Write what the audit leaves for after the reply (the chain's head): keyd's
        loop runs this once a reply is handed to its socket, and before it waits. Never
        raises: a head that cannot be written is logged, and the next audited request
        tries it again before its own line, refused if it fails again."""
        try:
            self._audit.write_head()
        except AuditUnavailable as exc:
            reason = exc.reason
            log.error("audit head not written; the next audited request retries it", reason=reason)  # noqa: TRY400 -- the reason says it all

    def reload_keys(self, peer: Peer = UNKNOWN_PEER) -> Keyring:
        """Load the keyring again and swap it in (whole: a request sees the old one or
        the new one), after its audit line; the job cache is untouched. Raises
        `DanubeError` (the old keyring stays) if a key file is refused, there is no
        loader, or the audit line cannot be written."""
        try:
            keyring = (self._load_keyring or _no_key_directory)()
        except DanubeError as exc:
            self._audit.append(
                "keys_reload",
                uid=peer.uid,
                pid=peer.pid,
                job_id=None,
                names=(),
                key_ids=self.keyring.key_ids,
                result=exc.code,
            )
            raise
        self._audit.append(
            "keys_reload",
            uid=peer.uid,
            pid=peer.pid,
            job_id=None,
            names=(),
            key_ids=keyring.key_ids,
            result="ok",
        )
        self.keyring = keyring
        log.info(
            "keyring loaded",
            key_id=keyring.active_id.hex(),
            key_ids=[key_id.hex() for key_id in keyring.key_ids],
        )
        return keyring

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
        if code in (FORBIDDEN, UNAUTHORIZED, INTERNAL, TOO_LARGE, KEY_EXHAUSTED):
            # An oversized request is dropped with this line, never silently.
            log.warning("request refused", role=role, op=op, error=code)
        elif self._debug:
            log.debug("request refused", role=role, op=op, error=code)
        return self._encoder.encode(ErrorReply(id=request_id, error=code, message=message))

    @staticmethod
    def _count(counter: dict[str, int], name: str) -> None:
        counter[name] = counter.get(name, 0) + 1

    # The audit.

    def _record(self, op: str, peer: Peer, request: Any, *, result: str) -> None:
        """The audit line of a refused audited request; `_Refused` if it cannot be
        written."""
        job_id: str | None = getattr(request, "job_id", None)
        names: list[str] = []
        key_ids: list[bytes] = []
        if isinstance(request, JobLoadRequest):
            names = [secret.name for secret in request.secrets[:MAX_ITEMS]]
            key_ids = _key_ids_of(secret.ciphertext for secret in request.secrets[:MAX_ITEMS])
        elif isinstance(request, RewrapRequest):
            names = [item.context for item in request.items[:MAX_ITEMS]]
            key_ids = _key_ids_of(item.ciphertext for item in request.items[:MAX_ITEMS])
        self._write_audit(op, peer, job_id=job_id, names=names, key_ids=key_ids, result=result)

    def _write_audit(
        self,
        op: str,
        peer: Peer,
        *,
        job_id: str | None,
        names: Sequence[str],
        key_ids: Sequence[bytes],
        result: str,
    ) -> None:
        try:
            self._audit.append(
                op,
                uid=peer.uid,
                pid=peer.pid,
                job_id=job_id,
                names=names,
                key_ids=key_ids,
                result=result,
            )
        except AuditUnavailable as exc:
            log.error("audit line not written; request refused", op=op, reason=exc.reason)  # noqa: TRY400 -- the reason says it all
            raise _Refused(INTERNAL, AUDIT_UNAVAILABLE, audited=True) from None

    # The ops.

    def _ping(self, request: PingRequest, _peer: Peer) -> bytes:
        return self._encoder.encode(
            PingReply(id=request.id, key_id=self.keyring.active_id, boot_id=self.boot_id)
        )

    def _reserve(self, active: Aead, count: int) -> None:
        """Count `count` encryptions under the active key before they are made."""
        try:
            self._counter.reserve(active.key_id, count)
        except KeyExhausted as exc:
            log.warning("key exhausted; rotate the key", key_id=active.key_id.hex())
            raise _Refused(KEY_EXHAUSTED, exc.message) from None
        except CounterUnavailable as exc:
            log.warning("encryption count not kept; encryption refused", reason=exc.message)
            raise _Refused(INTERNAL, "keyd cannot keep its encryption count; see its log") from None

    def _encrypt(self, request: EncryptRequest, _peer: Peer) -> bytes:
        items = request.items
        _check_count(len(items), "items")
        for index, item in enumerate(items):
            if len(item.plaintext) > MAX_PLAINTEXT_BYTES:
                raise _Refused(
                    TOO_LARGE, f"item {index}: plaintext over {MAX_PLAINTEXT_BYTES} bytes"
                )
            _check_context(item.context, f"item {index}")
        active = self.keyring.active
        self._reserve(active, len(items))
        encrypt = active.encrypt
        ciphertexts = [encrypt(item.plaintext, item.context) for item in items]
        return self._encoder.encode(ItemsReply(id=request.id, items=ciphertexts))

    def _open_into(self, ciphertext: bytes, context: str, out: bytearray, what: str) -> None:
        """Decrypt under the loaded key the ciphertext names; `_Refused` if it does not
        open (an unknown key id is the same `decrypt_failed` as a flipped bit)."""
        cipher = _cipher_for(self.keyring, ciphertext)
        if cipher is None:
            raise _decrypt_failed(what)
        try:
            cipher.decrypt_into(ciphertext, context, out)
        except DecryptFailed:
            raise _decrypt_failed(what) from None
        self.counters.decryptions += 1

    def _rewrap(self, request: RewrapRequest, peer: Peer) -> bytes:
        items = request.items
        _check_ciphertext_items(items)
        keyring = self.keyring
        active = keyring.active
        self._reserve(active, len(items))
        rewrapped: list[bytes] = []
        for index, item in enumerate(items):
            plaintext = bytearray(plaintext_size(item.ciphertext))
            try:
                self._open_into(item.ciphertext, item.context, plaintext, f"item {index}")
                rewrapped.append(active.encrypt(plaintext, item.context))
            finally:
                zero(plaintext)
        sources = _key_ids_of(item.ciphertext for item in items)
        self._write_audit(
            "rewrap",
            peer,
            job_id=None,
            names=[item.context for item in items],
            key_ids=[*(key_id for key_id in sources if key_id != active.key_id), active.key_id],
            result="ok",
        )
        log.info("ciphertexts rewrapped", count=len(items), key_id=active.key_id.hex())
        return self._encoder.encode(ItemsReply(id=request.id, items=rewrapped))

    def _job_load(self, request: JobLoadRequest, peer: Peer) -> bytes:
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
                self._open_into(secret.ciphertext, secret.context, out, f"secret {secret.name!r}")
            loaded = self._cache.load(
                request.job_id, request.token_sha256, request.ttl_s, plaintexts
            )
        except CacheFull as exc:
            for plaintext in plaintexts.values():
                zero(plaintext)
            log.warning("job not loaded: cache full", job_id=request.job_id, reason=str(exc))
            raise _Refused(
                TOO_LARGE,
                "keyd's job cache is full (jobs or keyd.cache_max_bytes); drop finished jobs",
            ) from None
        except BaseException:
            for plaintext in plaintexts.values():
                zero(plaintext)
            raise
        try:
            self._write_audit(
                "job_load",
                peer,
                job_id=request.job_id,
                names=[secret.name for secret in secrets],
                key_ids=_key_ids_of(secret.ciphertext for secret in secrets),
                result="ok",
            )
        except _Refused:
            self._cache.drop(request.job_id)  # unrecorded, so not loaded
            raise
        log.info(
            "job loaded",
            job_id=request.job_id,
            secret_count=loaded,
            ttl_s=min(request.ttl_s, self._cache.max_ttl_s),
        )
        return self._encoder.encode(JobLoadReply(id=request.id, loaded=loaded))

    def _job_drop(self, request: JobDropRequest, _peer: Peer) -> bytes:
        _check_job_id(request.job_id)
        dropped = self._cache.drop(request.job_id)
        log.info("job dropped", job_id=request.job_id, was_cached=dropped)
        return self._encoder.encode(JobDropReply(id=request.id, dropped=dropped))

    def _stats(self, request: StatsRequest, _peer: Peer) -> bytes:
        counters = self.counters
        keyring = self.keyring
        try:
            self._counter.count(keyring.active_id)  # the active key's count is always shown
        except CounterUnavailable as exc:
            log.warning("encryption count unreadable", reason=exc.message)
        return self._encoder.encode(
            StatsReply(
                id=request.id,
                boot_id=self.boot_id,
                key_id=keyring.active_id.hex(),
                key_ids=[key_id.hex() for key_id in keyring.key_ids],
                uptime_s=round(self._clock() - self._started, 3),
                jobs_cached=len(self._cache),
                secrets_cached=self._cache.secret_count(),
                requests=dict(counters.requests),
                errors=dict(counters.errors),
                encryptions=self._counter.counts(),
                encryption_limit=self._counter.limit,
                decryptions=counters.decryptions,
                cache_bytes=self._cache.plaintext_bytes,
                cache_max_bytes=self._cache.max_bytes or 0,
                dropped_messages=counters.dropped_messages,
                dropped_replies=counters.dropped_replies,
                denied_connections=counters.denied_connections,
            )
        )

    def _keys_reload(self, request: KeysReloadRequest, peer: Peer) -> bytes:
        try:
            keyring = self.reload_keys(peer)
        except AuditUnavailable as exc:
            log.error("audit line not written; keyring not reloaded", reason=exc.reason)  # noqa: TRY400 -- the reason says it all
            raise _Refused(INTERNAL, AUDIT_UNAVAILABLE, audited=True) from None
        except DanubeError as exc:
            log.warning("keyring not reloaded; the loaded one stays", reason=exc.message)
            raise _Refused(
                INTERNAL, f"keyring not reloaded, the loaded one stays: {exc.message}", audited=True
            ) from None
        return self._encoder.encode(
            KeysReloadReply(id=request.id, key_id=keyring.active_id, key_ids=list(keyring.key_ids))
        )

    def _audit_verify(self, request: AuditVerifyRequest, _peer: Peer) -> bytes:
        verdict = self._audit.verify()
        if not verdict.intact:
            log.warning(
                "audit chain broken",
                first_bad_line=verdict.first_bad_line,
                problem=verdict.problem,
            )
        return self._encoder.encode(
            AuditVerifyReply(
                id=request.id,
                records=verdict.records,
                intact=verdict.intact,
                first_bad_line=verdict.first_bad_line,
                problem=verdict.problem,
            )
        )

    def _job_secrets(self, request: JobSecretsRequest, peer: Peer) -> bytearray:
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
        self._write_audit(
            "job_secrets", peer, job_id=request.job_id, names=list(secrets), key_ids=(), result="ok"
        )
        # Encoded straight from the cache's mapping, before anything can change it, into
        # a buffer big enough from the start (see `SecretCache.reply_capacity`).
        buffer = bytearray(self._cache.reply_capacity(request.job_id))
        self._encoder.encode_into(_JobSecretsOut(id=request.id, secrets=secrets), buffer)
        if self._info:
            log.info("job secrets fetched", job_id=request.job_id, secret_count=len(secrets))
        return buffer


_ALLOWED: dict[Role, frozenset[str]] = {"control": CONTROL_OPS, "worker": WORKER_OPS}


_AUDITED = frozenset({"job_load", "job_secrets", "rewrap", "keys_reload"})


def _cipher_for(keyring: Keyring, ciphertext: bytes) -> Aead | None:
    """The loaded key a version-1 ciphertext names in bytes 1..4, or None."""
    if len(ciphertext) < HEADER_BYTES or ciphertext[0] != FORMAT_VERSION:
        return None
    return keyring.by_id(ciphertext[1:HEADER_BYTES])


def _no_key_directory() -> Keyring:
    raise DanubeError("this keyd was started without a key directory to reload")


def _decrypt_failed(what: str) -> _Refused:
    return _Refused(
        DECRYPT_FAILED,
        f"{what} does not open under a loaded key and its context "
        "(wrong key or context, corrupted, or unknown format)",
    )


def _key_ids_of(ciphertexts: Any) -> list[bytes]:
    """The distinct key ids the ciphertexts name, in order of first appearance."""
    seen: dict[bytes, None] = {}
    for ciphertext in ciphertexts:
        if len(ciphertext) >= HEADER_BYTES:
            seen.setdefault(bytes(ciphertext[1:HEADER_BYTES]), None)
    return list(seen)


def _check_ciphertext_items(items: list[CiphertextItem]) -> None:
    _check_count(len(items), "items")
    for index, item in enumerate(items):
        if len(item.ciphertext) > MAX_CIPHERTEXT_BYTES:
            raise _Refused(TOO_LARGE, f"item {index}: ciphertext over {MAX_CIPHERTEXT_BYTES} bytes")
        _check_context(item.context, f"item {index}")


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
