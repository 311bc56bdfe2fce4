"""Users."""

from __future__ import annotations

from sqlalchemy.orm import Session

from danube_shared.db.ids import new_id
from danube_shared.db.repositories.flushing import flush
from danube_shared.db.schema import User
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import NotFound


class UserRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(self, *, username: str, display_name: str) -> User:
        """A new user; `Conflict` if the username is taken."""
        user = User(id=new_id(), username=username, display_name=display_name, created_at=utcnow())
        self._session.add(user)
        flush(self._session, conflict=f"the username {username!r} is already taken")
        return user

    def get(self, user_id: str) -> User:
        user = self._session.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user
