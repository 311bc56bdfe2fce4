"""Who may connect to keyd's sockets: a ZAP handler (ZeroMQ RFC 27) that decides by the
kernel's peer credentials.

For an ipc:// connection, libzmq reads SO_PEERCRED when the connection is accepted and
appends `:<uid>:<gid>:<pid>` to the ZAP request's address field. Each keyd socket has its
own ZAP domain, and each domain its allowed uids (keyd's own plus the configured ones).
Anything else, including a request without readable credentials (a libzmq built without
SO_PEERCRED), is refused: the peer's handshake fails and it never sees a reply.

An accepted peer's uid goes back as the ZAP User-Id and its pid as the ZAP metadata
property `X-Peer-Pid` (RFC 27's metadata frame), so that every message from that
connection carries both (`zmq_msg_gets`): the audit log records them. The pid is the one
the kernel saw when the connection was made (SO_PEERCRED), empty where it has none.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_VERSION = b"1.0"
PEER_PID_PROPERTY = "X-Peer-Pid"
USER_ID_PROPERTY = "User-Id"


def _metadata(name: str, value: bytes) -> bytes:
    """One ZMTP metadata property: name length (1 byte), name, value length (4 bytes,
    network order), value."""
    encoded = name.encode()
    return bytes([len(encoded)]) + encoded + struct.pack(">I", len(value)) + value


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    allowed: bool
    domain: str
    reason: str
    uid: int | None = None
    pid: int | None = None


def peer_credentials(address: bytes) -> tuple[int, int, int | None] | None:
    """(uid, gid, pid) from a ZAP address field ending in `:<uid>:<gid>:<pid>`, or None.

    The pid field is empty on platforms whose peer credentials carry none."""
    parts = address.rsplit(b":", 3)
    if len(parts) != 4:
        return None
    _, uid, gid, pid = parts
    if not (uid.isdigit() and gid.isdigit() and (pid.isdigit() or pid == b"")):
        return None
    return int(uid), int(gid), int(pid) if pid else None


class PeerAuthorizer:
    """Answers ZAP requests: NULL mechanism only, uid in the domain's allowed set."""

    def __init__(self, allowed_uids: Mapping[str, frozenset[int]]) -> None:
        self._allowed = {domain.encode(): uids for domain, uids in allowed_uids.items()}

    def decide(self, request: Sequence[bytes]) -> Decision:
        """The decision for one ZAP request's frames (already stripped of the envelope)."""
        if len(request) < 6 or request[0] != _ZAP_VERSION:
            return Decision(allowed=False, domain="", reason="malformed ZAP request")
        domain, address, mechanism = request[2], request[3], request[5]
        domain_name = domain.decode(errors="replace")
        allowed = self._allowed.get(domain)
        if allowed is None:
            return Decision(allowed=False, domain=domain_name, reason="unknown ZAP domain")
        if mechanism != b"NULL":
            reason = "only the NULL mechanism is served"
            return Decision(allowed=False, domain=domain_name, reason=reason)
        credentials = peer_credentials(address)
        if credentials is None:
            return Decision(allowed=False, domain=domain_name, reason="no kernel peer credentials")
        uid, _, pid = credentials
        if uid not in allowed:
            reason = "uid not allowed on this socket"
            return Decision(allowed=False, domain=domain_name, reason=reason, uid=uid, pid=pid)
        return Decision(allowed=True, domain=domain_name, reason="OK", uid=uid, pid=pid)

    @staticmethod
    def reply(request: Sequence[bytes], decision: Decision) -> list[bytes]:
        """The ZAP reply frames for `decision` (200, or 400 for a refusal)."""
        request_id = request[1] if len(request) > 1 else b""
        if decision.allowed:
            pid = b"" if decision.pid is None else str(decision.pid).encode()
            return [
                _ZAP_VERSION,
                request_id,
                b"200",
                b"OK",
                str(decision.uid).encode(),
                _metadata(PEER_PID_PROPERTY, pid),
            ]
        return [_ZAP_VERSION, request_id, b"400", decision.reason.encode(), b"", b""]
