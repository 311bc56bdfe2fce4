"""The keyd wire protocol, version 1: the one module that keyd and its clients import.

Transport
    keyd binds two ZeroMQ ROUTER sockets in `keyd.socket_dir`:
    `ipc://<socket_dir>/keyd.sock` (control, for the API) and
    `ipc://<socket_dir>/keyd-worker.sock` (worker, for jobs). The directory is 0750 and the
    sockets 0660, both owned by keyd's account. keyd authenticates every connection with
    ZAP (domain `danube-keyd-control` or `danube-keyd-worker`): libzmq hands the handler
    the kernel's peer credentials of the ipc connection (SO_PEERCRED, in the ZAP address
    field as `<addr>:<uid>:<gid>:<pid>`) and keyd accepts only keyd's own uid plus
    `keyd.control_uids` or `keyd.worker_uids`. A refused peer's handshake fails; it never
    gets a reply.

Framing
    A request is one frame holding a msgpack map, preceded by an empty delimiter frame
    (REQ style: a plain REQ socket works, a DEALER sends `[b"", payload]`). The reply has
    the same shape. A frame larger than `MAX_MESSAGE_BYTES` makes libzmq drop the
    connection; a request with another frame layout is dropped without a reply.

Requests
    Every request is a map with `"v": 1` (`PROTOCOL_VERSION`), `"id"` (an int the reply
    echoes; clients use it to match replies to requests) and `"op"`, plus the op's fields.
    Unknown extra fields are ignored.

    ================  ========  ========================================  ==========================
    op                socket    request fields                            reply fields
    ================  ========  ========================================  ==========================
    ``ping``          both                                                ``key_id`` (bin, 4),
                                                                          ``boot_id`` (str)
    ``encrypt``       control   ``items``: [{``plaintext``: bin,          ``items``: [bin]
                                ``context``: str}]
    ``rewrap``        control   ``items``: [{``ciphertext``: bin,         ``items``: [bin]
                                ``context``: str}]
    ``job_load``      control   ``job_id``: str, ``token_sha256``:        ``loaded``: int
                                bin(32), ``ttl_s``: int, ``secrets``:
                                [{``name``: str, ``ciphertext``: bin,
                                ``context``: str}]
    ``job_drop``      control   ``job_id``: str                           ``dropped``: bool
    ``stats``         control                                             see `StatsReply`
    ``keys_reload``   control                                             ``key_id`` (bin, 4, the
                                                                          active key), ``key_ids``
                                                                          ([bin], all loaded)
    ``audit_verify``  control                                             ``records``: int,
                                                                          ``intact``: bool,
                                                                          ``first_bad_line``: int
                                                                          or nil (from 1),
                                                                          ``problem``: str or nil
    ``job_secrets``   worker    ``job_id``: str, ``token``: str           ``secrets``: {str: bin}
    ================  ========  ========================================  ==========================

    There is no ``decrypt``: no op of the control socket returns a plaintext (asking for
    ``decrypt`` is an unknown op, `bad_request`). `rewrap` opens each ciphertext under the
    key its bytes 1..4 name and seals it again under the active key, bound to the same
    context; the plaintext stays inside keyd and is overwritten once sealed.
    `keys_reload` loads the keyring again from the key directory (as SIGHUP does); the
    job cache is untouched. `audit_verify` checks keyd's audit chain.

    `boot_id` is new at every keyd start: a client that sees it change knows keyd's job
    cache is empty. `encrypt` and `rewrap` answer item for item, in order; if any item
    fails the whole request fails. `job_load` replaces a cached job of the same id; it
    decrypts every secret first and changes nothing if one fails. The cached entry lives
    for min(`ttl_s`, `keyd.cache_ttl_s`) seconds or until `job_drop`.

Limits per peer
    The worker socket queues at most 4 requests and 4 replies per peer: beyond 4 requests
    keyd stops reading that peer's connection, and a reply to a peer with 4 unread ones
    is dropped (counted in `stats` as `dropped_replies`, and logged). The job cache holds
    at most `keyd.cache_max_bytes` plaintext bytes and `MAX_CACHED_JOBS` jobs in all.

Audit
    keyd writes one line to its audit chain for every `job_load`, `job_secrets` (allowed
    or refused), `rewrap` and `keys_reload`, with the peer's uid and pid (ZAP attaches
    them to the connection: the User-Id and the metadata property `X-Peer-Pid`), before
    the reply exists. If the line cannot be written, the request is answered `internal`,
    "audit log unavailable", and discloses nothing.

Replies
    ``{"v": 1, "id": N, "ok": true, ...}`` or
    ``{"v": 1, "id": N, "ok": false, "error": CODE, "message": TEXT}``. `message` is written
    by keyd for people; it never holds a traceback, exception text from a library, a
    plaintext or key material. A request whose id cannot be read is answered with id 0.

Error codes
    `bad_request`    not msgpack, not a map, wrong version, missing field, wrong type,
                     unknown op, an empty or duplicate name
    `forbidden`      the op is not allowed on this socket
    `unauthorized`   `job_secrets` with a token whose SHA-256 does not match
    `not_found`      `job_secrets` for a job that is not cached (never loaded, dropped or
                     expired)
    `decrypt_failed` a ciphertext does not open under its key and context (wrong key or
                     context, a flipped bit, truncation, unknown version or key id)
    `too_large`      more than `MAX_ITEMS` items, a plaintext over `MAX_PLAINTEXT_BYTES`, a
                     field over its cap, or the cache would pass `MAX_CACHED_JOBS` jobs or
                     `keyd.cache_max_bytes` plaintext bytes (no other job is evicted)
    `key_exhausted`  `encrypt` or `rewrap` would pass the active key's encryption limit
                     (2**32); rotate the key
    `internal`       a keyd bug, a count file that cannot be written, or an audit line
                     that cannot be written ("audit log unavailable": nothing disclosed);
                     keyd logs it and keeps serving

Ciphertext format (version 1)
    byte 0 `0x01`; bytes 1..4 the key id (the first 4 bytes of
    SHA-256(b"danube-key-id\\x00" + key)); bytes 5..16 a random 96-bit nonce; then the
    AES-256-GCM ciphertext and its 16-byte tag. The AAD is bytes 0..4 followed by the UTF-8
    context (`secret:<secret id>` for a stored secret).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final, Literal

import msgspec

PROTOCOL_VERSION: Final = 1

CONTROL_SOCKET_NAME: Final = "keyd.sock"
WORKER_SOCKET_NAME: Final = "keyd-worker.sock"
LOCK_FILE_NAME: Final = "keyd.lock"

CONTROL_ZAP_DOMAIN: Final = "danube-keyd-control"
WORKER_ZAP_DOMAIN: Final = "danube-keyd-worker"

# Size caps. A frame over MAX_MESSAGE_BYTES never reaches keyd (libzmq drops the
# connection); the others are checked per request and answered with `too_large`.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
MAX_ITEMS: Final = 1000
MAX_PLAINTEXT_BYTES: Final = 64 * 1024
MAX_CONTEXT_BYTES: Final = 256
MAX_JOB_ID_CHARS: Final = 128
MAX_NAME_CHARS: Final = 256
MAX_TOKEN_CHARS: Final = 1024
MAX_CACHED_JOBS: Final = 10_000

# Ciphertext format, version 1.
FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32
KEY_ID_BYTES: Final = 4
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
HEADER_BYTES: Final = 1 + KEY_ID_BYTES
CIPHERTEXT_OVERHEAD: Final = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
MAX_CIPHERTEXT_BYTES: Final = MAX_PLAINTEXT_BYTES + CIPHERTEXT_OVERHEAD
KEY_ID_LABEL: Final = b"danube-key-id\x00"

ErrorCode = Literal[
    "bad_request",
    "forbidden",
    "unauthorized",
    "not_found",
    "decrypt_failed",
    "too_large",
    "key_exhausted",
    "internal",
]
BAD_REQUEST: Final = "bad_request"
FORBIDDEN: Final = "forbidden"
UNAUTHORIZED: Final = "unauthorized"
NOT_FOUND: Final = "not_found"
DECRYPT_FAILED: Final = "decrypt_failed"
TOO_LARGE: Final = "too_large"
KEY_EXHAUSTED: Final = "key_exhausted"
INTERNAL: Final = "internal"
ERROR_CODES: Final[tuple[ErrorCode, ...]] = (
    BAD_REQUEST,
    FORBIDDEN,
    UNAUTHORIZED,
    NOT_FOUND,
    DECRYPT_FAILED,
    TOO_LARGE,
    KEY_EXHAUSTED,
    INTERNAL,
)

Role = Literal["control", "worker"]
CONTROL_OPS: Final = frozenset(
    {"ping", "encrypt", "rewrap", "job_load", "job_drop", "stats", "keys_reload", "audit_verify"}
)
WORKER_OPS: Final = frozenset({"ping", "job_secrets"})
ALL_OPS: Final = CONTROL_OPS | WORKER_OPS


def key_id_for(key: bytes | bytearray) -> bytes:
    """The 4-byte key id of `key`, as written in every ciphertext it makes."""
    return hashlib.sha256(KEY_ID_LABEL + key).digest()[:KEY_ID_BYTES]


def control_socket_path(socket_dir: str | os.PathLike[str]) -> Path:
    return Path(socket_dir) / CONTROL_SOCKET_NAME


def worker_socket_path(socket_dir: str | os.PathLike[str]) -> Path:
    return Path(socket_dir) / WORKER_SOCKET_NAME


# ZeroMQ ipc:// endpoints are bound to sun_path: 108 bytes, the terminator included.
MAX_SOCKET_PATH_BYTES = 107


def socket_dir_problem(socket_dir: str | os.PathLike[str]) -> str | None:
    """Why keyd's sockets cannot be bound in `socket_dir`, or None if they can."""
    longest = worker_socket_path(Path(socket_dir).absolute())  # the longer of the two
    size = len(os.fsencode(longest))
    if size <= MAX_SOCKET_PATH_BYTES:
        return None
    return (
        f"{longest} would be {size} bytes, longer than the {MAX_SOCKET_PATH_BYTES} bytes "
        "a Unix socket path allows; choose a shorter directory"
    )


def endpoint(path: Path) -> str:
    """The ZeroMQ endpoint of the socket file at `path`."""
    return f"ipc://{path}"


# Requests. The union is tagged by "op"; "v" and "id" come first on the wire.


class Request(msgspec.Struct, tag_field="op", kw_only=True):
    v: int
    id: int


class PingRequest(Request, tag="ping"):
    pass


class EncryptItem(msgspec.Struct, kw_only=True):
    plaintext: bytes
    context: str


class EncryptRequest(Request, tag="encrypt"):
    items: list[EncryptItem]


class CiphertextItem(msgspec.Struct, kw_only=True):
    ciphertext: bytes
    context: str


class RewrapRequest(Request, tag="rewrap"):
    items: list[CiphertextItem]


class JobSecret(msgspec.Struct, kw_only=True):
    name: str
    ciphertext: bytes
    context: str


class JobLoadRequest(Request, tag="job_load"):
    job_id: str
    token_sha256: bytes
    ttl_s: int
    secrets: list[JobSecret]


class JobDropRequest(Request, tag="job_drop"):
    job_id: str


class StatsRequest(Request, tag="stats"):
    pass


class KeysReloadRequest(Request, tag="keys_reload"):
    pass


class AuditVerifyRequest(Request, tag="audit_verify"):
    pass


class JobSecretsRequest(Request, tag="job_secrets"):
    job_id: str
    token: str


ControlRequest = (
    PingRequest
    | EncryptRequest
    | RewrapRequest
    | JobLoadRequest
    | JobDropRequest
    | StatsRequest
    | KeysReloadRequest
    | AuditVerifyRequest
)
WorkerRequest = PingRequest | JobSecretsRequest
AnyRequest = ControlRequest | JobSecretsRequest


class RequestHead(msgspec.Struct):
    """What keyd can still read from a request that does not match its op's schema."""

    v: object = None
    id: object = None
    op: object = None


# Replies.


class Reply(msgspec.Struct, kw_only=True):
    v: int = PROTOCOL_VERSION
    id: int
    ok: bool = True


class ReplyHead(msgspec.Struct):
    """The fields every reply has; clients read these to route a reply to its request."""

    v: int
    id: int
    ok: bool


class ErrorReply(Reply, kw_only=True):
    ok: bool = False
    error: str
    message: str


class PingReply(Reply, kw_only=True):
    key_id: bytes
    boot_id: str


class ItemsReply(Reply, kw_only=True):
    """The reply to `encrypt` and `rewrap`: ciphertexts, item for item."""

    items: list[bytes]


class JobLoadReply(Reply, kw_only=True):
    loaded: int


class JobDropReply(Reply, kw_only=True):
    dropped: bool


class StatsReply(Reply, kw_only=True):
    """keyd's counters since it started (they reset with `boot_id`)."""

    boot_id: str
    key_id: str  # hex, the active key
    key_ids: list[str]  # hex, every loaded key, the active one first
    uptime_s: float
    jobs_cached: int
    secrets_cached: int
    requests: dict[str, int]  # by op; "invalid" for requests whose op could not be read
    errors: dict[str, int]  # by error code
    encryptions: dict[str, int]  # by key id (hex), persisted: drives rotation
    encryption_limit: int  # per key; `encrypt` and `rewrap` answer key_exhausted past it
    decryptions: int
    cache_bytes: int  # plaintext bytes in the job cache
    cache_max_bytes: int
    dropped_messages: int  # frames with a bad envelope, dropped without a reply
    dropped_replies: int  # replies to a peer that does not read them (over its queue)
    denied_connections: int  # refused by the peer-uid check


class KeysReloadReply(Reply, kw_only=True):
    key_id: bytes  # the active key
    key_ids: list[bytes]  # every loaded key, the active one first


class AuditVerifyReply(Reply, kw_only=True):
    records: int
    intact: bool
    first_bad_line: int | None  # counted from 1 across the kept files, oldest first
    problem: str | None  # what broke there, for people


class JobSecretsReply(Reply, kw_only=True):
    secrets: dict[str, bytes]


def token_sha256(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 bytes: what `job_load` carries and keyd compares."""
    return hashlib.sha256(token.encode()).digest()


def key_id_of(ciphertext: bytes) -> bytes:
    """The key id written in a version-1 ciphertext's header (bytes 1..4)."""
    return ciphertext[1:HEADER_BYTES]
