"""Who may connect to keyd's sockets: a ZAP handler (ZeroMQ RFC 27) that decides by the
kernel's peer credentials.

For an ipc:// connection, libzmq reads SO_PEERCRED when the connection is accepted and
appends `:<uid>:<gid>:<pid>` to the ZAP request's address field. Each keyd socket has its
own ZAP domain, and each domain its allowed uids (keyd's own plus the configured ones).
Anything else, including a request without readable credentials (a libzmq built without
SO_PEERCRED), is refused: the peer's handshake fails and it never sees a reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_VERSION = b"1.0"


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
            return [_ZAP_VERSION, request_id, b"200", b"OK", str(decision.uid).encode(), b""]
        return [_ZAP_VERSION, request_id, b"400", decision.reason.encode(), b"", b""]
