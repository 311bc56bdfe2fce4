"""A short cache of team access answers: for (path scope, object id, user), the object's
team and the user's role in it (None for a non-member), kept at most `ROLE_TTL_S` (5 s,
the same bound DESIGN 11 sets for tokens).

The team access check otherwise costs a database read on every team-scoped request.
A membership change made on this node clears the cache at once (`forget_team`), so this
node's own answers are never stale; another node's change takes effect here within 5 s,
as a revoked token does. An object's team never changes, and an object that vanished
is still refused by the unit that reads it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from danube_shared.db.schema import TeamRole

ROLE_TTL_S: Final = 5.0
# Bounds memory: a full cache is emptied, not evicted piecemeal (a refill is one read).
MAX_CACHED_ROLES: Final = 10_000

Found = tuple[str, TeamRole | None]  # the object's team, the user's role in it


@dataclass(frozen=True, slots=True)
class _Entry:
    found: Found
    until: float  # monotonic


class TeamRoleCache:
    def __init__(self, *, ttl_s: float = ROLE_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str, str], _Entry] = {}

    def get(self, scope: str, object_id: str, user_id: str) -> Found | None:
        key = (scope, object_id, user_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.until <= time.monotonic():
            del self._entries[key]
            return None
        return entry.found

    def put(self, scope: str, object_id: str, user_id: str, found: Found) -> None:
        if len(self._entries) >= MAX_CACHED_ROLES:
            self._entries.clear()
        self._entries[scope, object_id, user_id] = _Entry(found, time.monotonic() + self._ttl_s)

    def forget_team(self, team_id: str) -> None:
        """Drop every answer about `team_id`: a membership in it changed on this node."""
        for key, entry in list(self._entries.items()):
            if entry.found[0] == team_id:
                del self._entries[key]
