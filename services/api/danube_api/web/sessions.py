"""The web page's sign-in sessions: kept in memory by the API process, keyed by a random id.

A session holds the SHA-256 of the API token it was opened with (never the token), its
CSRF token and when it was last used. Every request re-reads the token by its hash, so a
revoked or expired token ends its sessions at once.

Why memory and not a table: a session is a convenience on top of a token the person keeps;
losing all sessions when the API restarts costs one sign-in, and a table would need a
migration and a write on every page view. With several API nodes, a load balancer must
keep a person on one node (or they sign in again). The store is bounded
(`MAX_SESSIONS`, the least recently used goes first) and a session unused for
`IDLE_TIMEOUT_S` is gone.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

MAX_SESSIONS: Final = 10_000
IDLE_TIMEOUT_S: Final = 8 * 3600.0
# 32 random bytes, URL-safe: as hard to guess as an API token.
_ID_BYTES: Final = 32


@dataclass(slots=True)
class WebSession:
    session_id: str
    token_sha256: bytes
    csrf_token: str
    last_used: float  # monotonic


class SessionStore:
    """Open sessions, least recently used first. One per API process."""

    def __init__(
        self, *, max_sessions: int = MAX_SESSIONS, idle_timeout_s: float = IDLE_TIMEOUT_S
    ) -> None:
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()
        self._max_sessions = max_sessions
        self._idle_timeout_s = idle_timeout_s

    def open(self, token_sha256: bytes) -> WebSession:
        """A new session for the token with this hash."""
        now = time.monotonic()
        self._drop_idle(now)
        while len(self._sessions) >= self._max_sessions:
            self._sessions.popitem(last=False)
        session = WebSession(
            session_id=secrets.token_urlsafe(_ID_BYTES),
            token_sha256=token_sha256,
            csrf_token=secrets.token_urlsafe(_ID_BYTES),
            last_used=now,
        )
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> WebSession | None:
        """The open session of this id, marked as used now; None if unknown or idle too long."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_used > self._idle_timeout_s:
            del self._sessions[session_id]
            return None
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _drop_idle(self, now: float) -> None:
        # Oldest first: stop at the first one still fresh.
        while self._sessions:
            session_id, session = next(iter(self._sessions.items()))
            if now - session.last_used <= self._idle_timeout_s:
                return
            del self._sessions[session_id]
